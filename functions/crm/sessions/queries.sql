-- Class sessions (SPEC 12). Parameters are %(name)s.

-- mark_no_shows --
-- One batch of the mark-no-shows job (service_role): bookings still booked 24 h after their
-- session ended become no_show (the credit stays used). SKIP LOCKED: copies of the job running at
-- once take different rows; a booking being cancelled or checked in right now is left for later.
with due as (
  select b.id
    from public.session_bookings b
    join public.class_sessions s on s.org_id = b.org_id and s.id = b.session_id
   where b.status = 'booked'
     and s.status = 'scheduled'
     and s.ends_at < now() - interval '24 hours'
   order by b.id
   limit %(batch)s
     for update of b skip locked
)
update public.session_bookings b
   set status = 'no_show'
  from due
 where b.id = due.id
returning b.id
