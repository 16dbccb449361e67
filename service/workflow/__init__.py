"""The durable deletion workflow on a PostgreSQL job queue (procrastinate)."""
