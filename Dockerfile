# One image for every cam service of the cluster; the command picks the service:
# cam-edge (default), cam-chat, cam-presence, cam-files, cam-health,
# cam-video-allocator, or camctl (e.g. `camctl migrate`), or `python -m camctl.lb ...`
# (load balancer certificate and probe), or `python -m camctl.secrets ...` (the bus
# credentials, written as root for the cam account below, and the bus services'
# healthcheck).
# The Janus SFUs have an image of their own: deploy/janus/.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# openssl makes the load balancer's self-signed certificate (the lb-cert service);
# the base image normally has it through ca-certificates.
RUN command -v openssl >/dev/null \
    || (apt-get update && apt-get install -y --no-install-recommends openssl \
        && rm -rf /var/lib/apt/lists/*)

# The services never need root. /var/lib/cam (cam.serverDatePath in
# deploy/docker/boot.ini), /var/backups/cam (cam.backupPath of the backups service) and
# /certs belong to them so a named volume mounted there inherits that ownership.
RUN groupadd --system cam \
    && useradd --system --gid cam --home-dir /app --no-create-home \
       --shell /usr/sbin/nologin cam \
    && install -d -o cam -g cam -m 0750 /var/lib/cam \
    && install -d -o cam -g cam -m 0700 /var/backups/cam \
    && install -d -o cam -g cam -m 0755 /certs

WORKDIR /app
COPY . /app
RUN pip install --no-cache-dir . \
    && rm -rf /app/build /app/*.egg-info

USER cam
EXPOSE 8080
CMD ["cam-edge"]
