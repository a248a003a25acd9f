#!/bin/sh
# Writes the credentials docker-compose.yml mounts as secrets, under
# ./secrets/ (git-ignored), once: a file that exists is left as it is.
#
#   deploy/secrets.sh            # from the repository root
#
# Passwords are 48 random hex digits (safe inside a URL). database_url is
# built from postgres_password and POSTGRES_USER / POSTGRES_DB (from .env when
# set there). The two webhook URLs are left empty: put a URL in
# secrets/alert_webhook_url (Alertmanager) and secrets/notify_webhook_url
# (bot4's own notifications) to be told; an empty notify_webhook_url leaves
# bot4's notifications off.
#
# The directory is private (0700); the files in it are 0644 because compose
# bind-mounts each one into a container whose user is not you (bot4 runs as
# uid 10001, Redis as 999): the directory is what keeps other host users out.
set -eu

dir=${1:-secrets}
umask 077
mkdir -p "$dir"
chmod 700 "$dir"

if [ -f .env ]; then
    # Only the two names used here, without sourcing the file.
    user=$(sed -n 's/^POSTGRES_USER=//p' .env | tail -n 1)
    db=$(sed -n 's/^POSTGRES_DB=//p' .env | tail -n 1)
fi
user=${user:-bot4}
db=${db:-bot4}

random() {
    od -An -tx1 -N24 /dev/urandom | tr -d ' \n'
}

write() { # name value: write it unless the file exists
    if [ ! -e "$dir/$1" ]; then
        printf '%s\n' "$2" > "$dir/$1"
        chmod 644 "$dir/$1"
        echo "wrote $dir/$1"
    fi
}

write postgres_password "$(random)"
write redis_password "$(random)"
write timescale_password "$(random)"
write grafana_admin_password "$(random)"
write database_url "postgresql://$user:$(cat "$dir/postgres_password")@postgres:5432/$db"
write alert_webhook_url ""
write notify_webhook_url ""
