# GitLab's configuration in the bids-flux stack (a swarm config, read through
# GITLAB_OMNIBUS_CONFIG="from_file('/omnibus_config.rb')"). Values that differ
# per site come from the service's environment (BIDSflux_stack.yml, from
# .env); the root password from the swarm secret gitlab_root_password.
#
# GitLab sits behind the stack's edge proxy, which terminates TLS: GitLab's own
# nginx serves plain HTTP on the overlay network only.

external_url "https://#{ENV.fetch('BIDSFLUX_GITLAB_HOST')}"
registry_external_url "https://#{ENV.fetch('BIDSFLUX_REGISTRY_HOST')}"

# Used once, when GitLab initialises its database; change it in GitLab later.
gitlab_rails['initial_root_password'] = File.read('/run/secrets/gitlab_root_password').strip

# Behind the edge: no TLS and no Let's Encrypt here.
letsencrypt['enable'] = false
nginx['listen_port'] = 80
nginx['listen_https'] = false
registry_nginx['listen_port'] = 5050
registry_nginx['listen_https'] = false
forwarded_headers = { 'X-Forwarded-Proto' => 'https', 'X-Forwarded-Ssl' => 'on' }
nginx['proxy_set_headers'] = forwarded_headers
registry_nginx['proxy_set_headers'] = forwarded_headers
# Client addresses in GitLab's logs come from the edge's X-Forwarded-For.
nginx['real_ip_trusted_addresses'] = [ENV.fetch('BIDSFLUX_NETWORK_SUBNET')]
nginx['real_ip_header'] = 'X-Forwarded-For'
nginx['real_ip_recursive'] = 'on'

# git over SSH is published on the data node's BIDSFLUX_GITLAB_SSH_PORT.
gitlab_rails['gitlab_shell_ssh_port'] = Integer(ENV.fetch('BIDSFLUX_GITLAB_SSH_PORT'))

# Research data stays inside: no sign-up, no usage data sent out.
gitlab_rails['gitlab_signup_enabled'] = false
gitlab_rails['usage_ping_enabled'] = false

# Sized for a data node shared with MinIO and the indexer (limit: 8 GB).
puma['worker_processes'] = 2
sidekiq['concurrency'] = 10
prometheus_monitoring['enable'] = false

# `gitlab-backup create` (docs/deploy.md) keeps a week of archives here.
gitlab_rails['backup_path'] = '/var/opt/gitlab/backups'
gitlab_rails['backup_keep_time'] = 604800
