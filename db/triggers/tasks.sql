-- tasks: protected org_id and timestamps.

drop trigger if exists _050_protect on public.tasks;
create trigger _050_protect
  before update on public.tasks
  for each row when (old.org_id is distinct from new.org_id)
  execute function hidden.tg__protect_org_id();

drop trigger if exists _100_timestamps on public.tasks;
create trigger _100_timestamps
  before update on public.tasks
  for each row when (old.* is distinct from new.*)
  execute function hidden.tg__set_updated_at();
