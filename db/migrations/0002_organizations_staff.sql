-- Organizations (tenants) and their staff. Everything else hangs off an organization.

-- `hidden`: functions the API roles may call (RLS helpers) but PostgREST does not serve, because
-- only `public` is exposed. Secrets live in `private`, which the API roles cannot reach at all.
create schema if not exists hidden;
revoke all on schema hidden from public;
grant usage on schema hidden to authenticated, service_role;
comment on schema hidden is 'Helpers for RLS policies and triggers: callable by API roles, not served by PostgREST.';

-- Functions are not executable by PUBLIC unless granted one by one (graphile/starter's habit).
alter default privileges revoke execute on functions from public;

create type public.staff_role as enum ('admin', 'manager', 'agent', 'viewer');
comment on type public.staff_role is
  'admin and manager read and change everything in their org; agent reads the org and changes only leads and tasks assigned to them; viewer reads only.';

create table public.organizations (
  id uuid primary key default gen_random_uuid(),
  slug text not null,
  name text not null,
  default_country text not null default 'DE',
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  constraint organizations_slug_key unique (slug),
  constraint organizations_slug_format check (slug ~ '^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$'),
  constraint organizations_name_length check (char_length(btrim(name)) between 1 and 200),
  constraint organizations_default_country_iso check (default_country ~ '^[A-Z]{2}$')
);
comment on table public.organizations is 'A business using the CRM (a tenant). Nobody sees another organization''s rows.';
comment on column public.organizations.default_country is 'ISO 3166-1 alpha-2 country used to parse local phone numbers.';

create table public.staff (
  org_id uuid not null references public.organizations (id) on delete cascade,
  user_id uuid not null references auth.users (id) on delete cascade,
  role public.staff_role not null default 'viewer',
  created_at timestamptz not null default now(),
  primary key (org_id, user_id)
);
comment on table public.staff is 'Membership of an auth user in an organization, with their role.';
create index staff_user_id_idx on public.staff (user_id);

alter table public.organizations enable row level security;
alter table public.staff enable row level security;

-- Least privilege on top of Supabase's default grants: anon gets nothing; authenticated gets the
-- columns it may write; RLS decides which rows.
revoke all on public.organizations, public.staff from anon, authenticated;
grant select on public.organizations to authenticated;
grant update (name, default_country) on public.organizations to authenticated;
grant select, delete on public.staff to authenticated;
grant insert (org_id, user_id, role), update (role) on public.staff to authenticated;
grant all on public.organizations, public.staff to service_role;
