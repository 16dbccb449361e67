DROP TABLE replicas;
DROP TABLE served_model;
DROP FUNCTION lethe_notify_routing();
DROP FUNCTION lethe_notify_served();
