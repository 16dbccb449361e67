DROP TABLE desired_adapters;
