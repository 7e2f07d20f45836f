-- staff: protected keys and the last admin (SPEC 6.6: an org always keeps at least one admin).

create or replace function hidden.tg_staff__protect()
returns trigger
language plpgsql volatile
set search_path = ''
as $$
declare
  field text := case when old.org_id is distinct from new.org_id then 'org_id' else 'user_id' end;
begin
  raise sqlstate 'PT422' using message = pg_catalog.format('staff.%s cannot be changed', field),
    detail = 'immutable_column', hint = field;
end
$$;
comment on function hidden.tg_staff__protect() is
  'Refuses moving a membership to another organization or user, for every writer (service_role included): remove and add instead.';
revoke all on function hidden.tg_staff__protect() from public;

create or replace function hidden.tg_staff__keep_an_admin()
returns trigger
language plpgsql volatile security definer
set search_path = ''
as $$
begin
  -- Lock the organization's row first: concurrent demotions or removals of its admins queue up
  -- here, and each one counts the admins that the previous one left (read committed reads the
  -- latest committed rows in each statement). NO KEY UPDATE does not block the foreign-key checks of
  -- rows being added to the organization. An organization being deleted (the cascade reaches
  -- staff after its row is gone) keeps nothing.
  perform from public.organizations o where o.id = old.org_id for no key update;
  if not found then
    return case tg_op when 'DELETE' then old else new end;
  end if;
  if not exists (select from public.staff s
                  where s.org_id = old.org_id and s.role = 'admin' and s.user_id <> old.user_id) then
    raise sqlstate 'PT409' using
      message = 'an organization must keep at least one admin: make someone else admin first',
      detail = 'last_admin';
  end if;
  return case tg_op when 'DELETE' then old else new end;
end
$$;
comment on function hidden.tg_staff__keep_an_admin() is
  'Refuses (PT409 last_admin) removing or demoting the last admin of an organization, under concurrency (the organization row is locked). Definer: it must count admins the caller''s RLS might hide.';
revoke all on function hidden.tg_staff__keep_an_admin() from public;

drop trigger if exists _050_protect on public.staff;
create trigger _050_protect
  before update on public.staff
  for each row when (old.org_id is distinct from new.org_id or old.user_id is distinct from new.user_id)
  execute function hidden.tg_staff__protect();

drop trigger if exists _060_keep_an_admin_demoted on public.staff;
create trigger _060_keep_an_admin_demoted
  before update on public.staff
  for each row when (old.role = 'admin' and new.role is distinct from 'admin')
  execute function hidden.tg_staff__keep_an_admin();

drop trigger if exists _060_keep_an_admin_removed on public.staff;
create trigger _060_keep_an_admin_removed
  before delete on public.staff
  for each row when (old.role = 'admin')
  execute function hidden.tg_staff__keep_an_admin();
