-- integrations: protected org_id, kind fixed, timestamps.

drop trigger if exists _050_protect on public.integrations;
create trigger _050_protect
  before update on public.integrations
  for each row when (old.org_id is distinct from new.org_id)
  execute function hidden.tg__protect_org_id();

create or replace function hidden.tg_integrations__kind_fixed()
returns trigger
language plpgsql volatile
set search_path = ''
as $$
begin
  raise sqlstate 'PT422' using message = 'an integration''s kind cannot change; create another one',
    detail = 'kind_immutable', hint = 'kind';
end
$$;
comment on function hidden.tg_integrations__kind_fixed() is 'Refuses changing an integration''s kind (its secrets and events belong to it).';
revoke all on function hidden.tg_integrations__kind_fixed() from public;

drop trigger if exists _060_kind_fixed on public.integrations;
create trigger _060_kind_fixed
  before update on public.integrations
  for each row when (old.kind is distinct from new.kind)
  execute function hidden.tg_integrations__kind_fixed();

create or replace function hidden.tg_integrations__check_base_url()
returns trigger
language plpgsql volatile security definer  -- the rules are in private, out of the API roles' reach
set search_path = ''
as $$
declare
  refusal text := private.webhook_url_refusal(new.settings ->> 'base_url', hidden.webhook_allow_loopback());
begin
  if refusal is not null then
    raise sqlstate 'PT422' using message = 'base_url ' || refusal, detail = 'url_refused', hint = 'settings.base_url';
  end if;
  return new;
end
$$;
comment on function hidden.tg_integrations__check_base_url() is
  'PT422 (field settings.base_url) for a warehouse base URL that is not http(s) or names a refused address, whoever writes it (create_integration or an admin''s PATCH of settings).';
revoke all on function hidden.tg_integrations__check_base_url() from public;

drop trigger if exists _070_check_base_url on public.integrations;
create trigger _070_check_base_url
  before insert or update of settings on public.integrations
  for each row when (new.kind = 'wms' and new.settings ? 'base_url')
  execute function hidden.tg_integrations__check_base_url();

drop trigger if exists _100_timestamps on public.integrations;
create trigger _100_timestamps
  before update on public.integrations
  for each row when (old.* is distinct from new.*)
  execute function hidden.tg__set_updated_at();
