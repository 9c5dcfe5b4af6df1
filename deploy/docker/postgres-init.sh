#!/bin/sh
# The application role of the docker compose cluster, made once, when the postgres
# service initialises an empty camdata volume (mounted in /docker-entrypoint-initdb.d/;
# the image's entrypoint runs it against its temporary server, over the local socket,
# as the superuser $POSTGRES_USER, in the database $POSTGRES_DB).
#
# As camctl up does for its embedded PostgreSQL (camctl/rig.py, create_app_database):
# the role `cam`, with POSTGRES_PASSWORD (the password of cam.databaseUrl), is no
# superuser and may not create databases, roles or replicate; in $POSTGRES_DB it owns
# the schema `cam` (its search_path), where every table lives, and nothing else;
# `public` is closed to everyone. The backup role `cam_backup`, with
# POSTGRES_BACKUP_PASSWORD, may replicate (pg_basebackup, pg_receivewal) and nothing
# else. Then the superuser's password is removed: it logs in
# only inside the postgres container, where the image's pg_hba.conf trusts the socket
# (`docker compose exec postgres psql -U postgres cam`), never over the network.
psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
     -v app_password="$POSTGRES_PASSWORD" -v backup_password="$POSTGRES_BACKUP_PASSWORD" \
     -v db="$POSTGRES_DB" -v superuser="$POSTGRES_USER" <<'EOSQL'
SET password_encryption = 'scram-sha-256';
CREATE ROLE cam LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION PASSWORD :'app_password';
CREATE ROLE cam_backup LOGIN REPLICATION NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'backup_password';
REVOKE ALL ON DATABASE :"db" FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE :"db" TO cam;
ALTER ROLE cam IN DATABASE :"db" SET search_path = cam;
REVOKE ALL ON SCHEMA public FROM PUBLIC;
CREATE SCHEMA cam AUTHORIZATION cam;
ALTER ROLE :"superuser" PASSWORD NULL;
EOSQL
# Replication connections (base backups, the WAL archive) by the backup role only.
echo "host replication cam_backup all scram-sha-256" >> "$PGDATA/pg_hba.conf"
