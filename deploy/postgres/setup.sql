-- A PostgreSQL database for memq, for sites beyond one NFS server (many nodes, heavy grids).
-- Run as a superuser:  psql -v password="'$(openssl rand -base64 24)'" -f deploy/postgres/setup.sql
-- then give every node the URL postgresql+psycopg://memq@DBHOST/memq and the password in
-- ~/.pgpass (mode 0600), never on a command line: memq --db postgresql+psycopg://memq@DBHOST/memq
\set ON_ERROR_STOP on
SELECT 'CREATE ROLE memq LOGIN' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'memq')\gexec
ALTER ROLE memq WITH LOGIN PASSWORD :password;
-- memq also asks for this when it connects; set here, it holds behind a pooler that drops startup options
ALTER ROLE memq SET plan_cache_mode = force_generic_plan;
SELECT 'CREATE DATABASE memq OWNER memq' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'memq')\gexec
REVOKE ALL ON DATABASE memq FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE memq TO memq;
-- memq creates its tables on first use (`memq submit`); each worker holds one or two connections.
