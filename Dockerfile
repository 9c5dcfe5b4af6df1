# One image for every service of the cluster; the command picks the service:
# cam-edge (default), cam-chat, cam-health, or camctl (e.g. `camctl migrate`).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The services never need root. /var/lib/cam (cam.serverDatePath in
# deploy/docker/boot.ini) belongs to them so a named volume mounted there inherits
# that ownership.
RUN groupadd --system cam \
    && useradd --system --gid cam --home-dir /app --no-create-home \
       --shell /usr/sbin/nologin cam \
    && install -d -o cam -g cam -m 0750 /var/lib/cam

WORKDIR /app
COPY . /app
RUN pip install --no-cache-dir . \
    && rm -rf /app/build /app/*.egg-info

USER cam
EXPOSE 8080
CMD ["cam-edge"]
