-- Generic `updated_at` maintenance, attached to every table with that column.

create or replace function hidden.tg__set_updated_at()
returns trigger
language plpgsql volatile
set search_path = ''
as $$
begin
  new.updated_at := now();
  return new;
end
$$;
comment on function hidden.tg__set_updated_at() is 'Sets updated_at on every update.';
revoke all on function hidden.tg__set_updated_at() from public;

drop trigger if exists _100_timestamps on public.organizations;
create trigger _100_timestamps
  before update on public.organizations
  for each row execute function hidden.tg__set_updated_at();
