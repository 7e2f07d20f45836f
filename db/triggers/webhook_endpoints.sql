-- webhook_endpoints: URL rules for every writer, disable/enable bookkeeping, pausing deliveries.

create or replace function hidden.tg_webhook_endpoints__check_url()
returns trigger
language plpgsql volatile security definer  -- the rules are in private, out of the API roles' reach
set search_path = ''
as $$
declare
  refusal text := private.webhook_url_refusal(new.url, hidden.webhook_allow_loopback());
begin
  if refusal is not null then
    raise sqlstate 'PT422' using message = 'url ' || refusal, detail = 'url_refused', hint = 'url';
  end if;
  return new;
end
$$;
comment on function hidden.tg_webhook_endpoints__check_url() is
  'PT422 (field url) for an endpoint URL that is not http(s) or names a refused address literally.';
revoke all on function hidden.tg_webhook_endpoints__check_url() from public;

create or replace function hidden.tg_webhook_endpoints__enabled()
returns trigger
language plpgsql volatile
set search_path = ''
as $$
begin
  if new.enabled then
    new.disabled_reason := null;
    new.disabled_at := null;
    new.failing_since := null;  -- a fresh start: five more days
  else
    new.disabled_reason := coalesce(new.disabled_reason, 'disabled by an admin');
    new.disabled_at := pg_catalog.now();
  end if;
  return new;
end
$$;
comment on function hidden.tg_webhook_endpoints__enabled() is
  'Keeps disabled_reason/disabled_at in step with enabled; re-enabling clears the failure streak.';
revoke all on function hidden.tg_webhook_endpoints__enabled() from public;

create or replace function hidden.tg_webhook_endpoints__pause_deliveries()
returns trigger
language plpgsql volatile security definer
set search_path = ''
as $$
begin
  if new.enabled then
    update public.webhook_deliveries d set next_attempt_at = pg_catalog.now()
     where d.endpoint_id = new.id and d.status in ('pending', 'failed') and d.next_attempt_at = 'infinity';
    perform pg_catalog.pg_notify('crm_outbox', 'enabled');
  else
    update public.webhook_deliveries d set next_attempt_at = 'infinity'
     where d.endpoint_id = new.id and d.status in ('pending', 'failed');
  end if;
  return null;
end
$$;
comment on function hidden.tg_webhook_endpoints__pause_deliveries() is
  'A disabled endpoint''s queued deliveries wait (next_attempt_at = infinity); enabling it sends them now.';
revoke all on function hidden.tg_webhook_endpoints__pause_deliveries() from public;

drop trigger if exists _100_timestamps on public.webhook_endpoints;
create trigger _100_timestamps
  before update on public.webhook_endpoints
  for each row execute function hidden.tg__set_updated_at();

drop trigger if exists _200_check_url on public.webhook_endpoints;
create trigger _200_check_url
  before insert or update of url on public.webhook_endpoints
  for each row execute function hidden.tg_webhook_endpoints__check_url();

drop trigger if exists _300_enabled on public.webhook_endpoints;
create trigger _300_enabled
  before update of enabled on public.webhook_endpoints
  for each row when (old.enabled is distinct from new.enabled)
  execute function hidden.tg_webhook_endpoints__enabled();

drop trigger if exists _500_pause_deliveries on public.webhook_endpoints;
create trigger _500_pause_deliveries
  after update of enabled on public.webhook_endpoints
  for each row when (old.enabled is distinct from new.enabled)
  execute function hidden.tg_webhook_endpoints__pause_deliveries();
