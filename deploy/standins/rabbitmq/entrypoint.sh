#!/bin/sh
# As the official image: the default user from the environment, reachable from other hosts,
# the node in the foreground.
set -eu
conf=/etc/rabbitmq/rabbitmq.conf
{
  echo "default_user = ${RABBITMQ_DEFAULT_USER:-guest}"
  echo "default_pass = ${RABBITMQ_DEFAULT_PASS:-guest}"
  echo "loopback_users = none"
  echo "listeners.tcp.default = 5672"
} > "$conf"
chown -R rabbitmq:rabbitmq /var/lib/rabbitmq
exec rabbitmq-server
