-- Bootstraps the three roles for docker compose (what `npm run db:setup` does in development).
-- NOREPLICATION, NOCREATEDB, NOCREATEROLE are PostgreSQL's defaults, said anyway: readiness fails on each (ADR 0001 §2).
-- No role is granted anything but the memberships below (readiness fails on any other, pg_* roles included).
CREATE ROLE dealix_owner LOGIN PASSWORD 'dealix_owner' NOSUPERUSER NOBYPASSRLS NOREPLICATION NOCREATEDB NOCREATEROLE;
CREATE ROLE dealix_app LOGIN PASSWORD 'dealix_app' NOSUPERUSER NOBYPASSRLS NOREPLICATION NOCREATEDB NOCREATEROLE NOINHERIT;
CREATE ROLE dealix_system NOLOGIN NOSUPERUSER NOBYPASSRLS NOREPLICATION NOCREATEDB NOCREATEROLE NOINHERIT;
-- The platform operator routes' role (ADR 0014): the only writer of tenant_limits.
CREATE ROLE dealix_operator NOLOGIN NOSUPERUSER NOBYPASSRLS NOREPLICATION NOCREATEDB NOCREATEROLE NOINHERIT;
-- PostgreSQL 16 (the compose image): inheritance is per grant; the app reaches the system and operator roles only by SET ROLE.
GRANT dealix_system TO dealix_app WITH INHERIT FALSE;
GRANT dealix_operator TO dealix_app WITH INHERIT FALSE;
GRANT dealix_system TO dealix_owner;
CREATE DATABASE dealix OWNER dealix_owner;
\connect dealix
ALTER SCHEMA public OWNER TO dealix_owner;
REVOKE ALL ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO dealix_app, dealix_system, dealix_operator;
REVOKE ALL ON DATABASE dealix FROM PUBLIC;
GRANT CONNECT ON DATABASE dealix TO dealix_app;
