--[[
Example kumod policy (/opt/kumomta/etc/policy/init.lua) with kumo-suppression.

Copy suppression.lua next to this file (or anywhere on package.path), point `config` at
the same config.toml the `kumo-suppress` exporter uses, and adjust paths/listeners.

Order matters (docs/kumod-setup.md explains each step):
  0. A log hook, if the exporter is fed by webhook, BEFORE the queue helper: it owns the
     queue `<name>.log_hook` through its own get_queue_config handler.
  1. suppression:new{} runs at the top level, when the policy loads (kumo.on may not be
     called from inside an event handler), and BEFORE the queue helper: both register a
     get_queue_config handler, they run in registration order, and the queue helper
     answers for every queue (the first answer wins). suppression's handler answers only
     for its own queue (`suppressed.kumo_suppression`) and returns nothing for every
     other one.
  2. The queue helper (policy-extras.queue) after them.
  3. Your own message handlers call sup:check_smtp / sup:check_http AFTER the queue
     helper has applied its settings, so the module's `queue` meta (bounce/drop) wins.
]]
local kumo = require 'kumo'

-- (0) only when the exporter is fed by webhook: the log hook, before the queue helper
-- (the README's Webhook section has variants with a token, retries and batching).
-- local log_hooks = require 'policy-extras.log_hooks'
-- log_hooks:new_json {
--   name = 'suppression',
--   url = 'http://127.0.0.1:8086/v1/events',
--   log_parameters = { meta = { 'x_suppression_domain' }, headers = { 'From' } },
-- }

-- (1) the suppression module: reads [policy], [keys] and [export] from the shared config
local suppression = require 'suppression'
local sup = suppression:new {
  config = '/etc/kumo-suppression/config.toml',
  -- Overrides win over the config file, e.g. during a rollout:
  -- smtp_action = 'shadow', http_action = 'shadow',
}

-- (2) the queue helper, AFTER suppression:new
local queue_module = require 'policy-extras.queue'
local queue_helper = queue_module:setup { '/opt/kumomta/etc/policy/queues.toml' }

kumo.on('init', function()
  kumo.define_spool {
    name = 'data',
    path = '/var/spool/kumomta/data',
    kind = 'RocksDB',
  }
  kumo.define_spool {
    name = 'meta',
    path = '/var/spool/kumomta/meta',
    kind = 'RocksDB',
  }

  -- The exporter ingests these logs. Segments are closed (made read-only) after a
  -- minute so new bounces reach the suppression list quickly. Logging the meta the
  -- module stamps tells the exporter which sending domain each record belongs to,
  -- without a spool read per event (which logging headers would cost).
  kumo.configure_local_logs {
    log_dir = '/var/log/kumomta',
    max_segment_duration = '1 minute',
    meta = { 'x_suppression_domain' },
    -- only needed if some records lack the meta (e.g. mail injected before rollout)
    -- and [keys].sending_domain = "from_header":
    -- headers = { 'From' },
  }

  kumo.start_esmtp_listener {
    listen = '0.0.0.0:25',
    relay_hosts = { '127.0.0.1', '10.0.0.0/8' },
    -- kumod's X-KumoRef trace header then carries the stamped sending domain, and a
    -- complaint (ARF report) is counted against exactly the domain the message was
    -- checked against
    trace_headers = { include_meta_names = { 'x_suppression_domain' } },
  }

  kumo.start_http_listener {
    listen = '127.0.0.1:8000',
  }
end)

-- (3) per-message policy: the queue helper first, then the suppression check.
-- SMTP defaults to the `bounce` action: the message is accepted and bounced from the
-- module's own queue, because a kumo.reject here would reject the WHOLE transaction
-- (every recipient of it), not just the suppressed one.
kumo.on('smtp_server_message_received', function(msg, conn_meta)
  queue_helper:apply(msg)
  sup:check_smtp(msg, conn_meta)
end)

-- HTTP injection defaults to `reject`: the injector gets a failed recipient with the
-- reason ("5.7.1 recipient suppressed for example.com: bounce since 2026-11-20").
-- Requests with `deferred_generation: true` are answered before generation and kumod
-- discards these per-recipient rejects: use http_action = 'bounce' for such injectors.
-- `drop` over HTTP logs nothing at all, not even a Reception.
kumo.on('http_message_generated', function(msg)
  queue_helper:apply(msg)
  sup:check_http(msg)
end)

-- Listeners with `deferred_queue = true` never run smtp_server_message_received: check
-- the message when kumod injects it from deferred_smtp_inject.kumomta.internal, with the
-- `bounce` action (a kumo.reject here bounces the WHOLE message, every recipient).
-- kumo.on('smtp_server_message_deferred_inject', function(msg, conn_meta)
--   queue_helper:apply(msg)
--   sup:check_smtp(msg, conn_meta)
-- end)

-- Optional, with [keys].sending_domain = "sender" only: refuse suppressed recipients
-- at RCPT TO, before DATA (rejects just that recipient).
-- kumo.on('smtp_server_mail_from', function(sender, conn_meta)
--   sup:mail_from(sender, conn_meta)
-- end)
-- kumo.on('smtp_server_rcpt_to', function(rcpt, conn_meta)
--   sup:rcpt_to(rcpt, conn_meta)
-- end)

-- The suppression queue (and a log hook's queue) needs no entry in queues.toml, but each
-- needs a shaping entry: the shaping helper's ["default"] (limits and rates meant for
-- real MX hosts) applies to them too, and an entry overrides only the keys it names, so
-- max_message_rate (100/s per node in KumoMTA's default) must be lifted explicitly.
-- Add to your shaping TOML:
--   ['suppressed.kumo_suppression']
--   mx_rollup = false
--   connection_limit = 100
--   max_deliveries_per_connection = 100000
--   max_connection_rate = "1000/s"
--   max_message_rate = "100000/s"
--
--   ['suppression.log_hook']        # '<hook name>.log_hook', with the log hook above
--   mx_rollup = false
--   connection_limit = 100
--   max_deliveries_per_connection = 100000
--   max_connection_rate = "1000/s"
--   max_message_rate = "100000/s"
