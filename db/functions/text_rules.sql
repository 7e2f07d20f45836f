-- The text rules (0008_database_rules: text_max, text_multiline, text_problem, the normalising
-- triggers and CHECKs): the current definitions of text_normalize and is_clean_text, which run
-- for every text column written (normalising trigger, then CHECK). Same rules, with one fast path:
-- printable ASCII words separated by single spaces (most names, cities, titles and notes) is
-- already in every kind's normalised form and holds no refused character, so one anchored regex
-- replaces three to five unanchored ones and the NFC pass (crm.textrules mirrors the rules, and
-- tests/integration/test_text_rules.py feeds both one corpus).

create or replace function hidden.is_plain_text(value text)
returns boolean
language sql immutable parallel safe
as $$
  select value ~ '^[!-~]+( [!-~]+)*$'
$$;
comment on function hidden.is_plain_text(text) is
  'True for printable ASCII words separated by single spaces: text that every kind''s normalisation leaves as it is and that no rule refuses for its characters.';
revoke all on function hidden.is_plain_text(text) from public;
grant execute on function hidden.is_plain_text(text) to authenticated, service_role;

create or replace function hidden.text_normalize(value text, kind text)
returns text
language sql immutable parallel safe
as $$
  select case
    when value is null then null
    when hidden.is_plain_text(value) then value
    when hidden.text_multiline(kind) then
      pg_catalog.regexp_replace(
        pg_catalog.regexp_replace(
          pg_catalog.regexp_replace(
            pg_catalog.replace(pg_catalog.normalize(value, 'NFC'), E'\r\n', E'\n'),
            '[\u000b\u000c\u000d\u2028\u2029]', E'\n', 'g'),
          '[\u0009\u0020\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]+(\n|$)', '\1', 'g'),
        '^[\u0009-\u000d\u0020\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+|[\u0009-\u000d\u0020\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+$',
        '', 'g')
    else
      pg_catalog.btrim(pg_catalog.regexp_replace(
        pg_catalog.normalize(value, 'NFC'),
        '[\u0009-\u000d\u0020\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+', ' ', 'g'), ' ')
  end
$$;
comment on function hidden.text_normalize(text, text) is
  'The stored form of a text of that kind: NFC; single-line kinds collapse every whitespace run to one space and trim; multiline kinds unify line breaks to \n, drop trailing blanks of each line and trim.';

-- PL/pgSQL, not SQL: the CHECKs call it, and PostgreSQL plans CHECK expressions on every
-- statement; a PL/pgSQL function is compiled once per session, with the SQL helpers inside inlined
-- once (see 0018_booking_speed).
create or replace function hidden.is_clean_text(value text, kind text)
returns boolean
language plpgsql immutable parallel safe
as $$
begin
  if value is null then
    return true;
  elsif hidden.is_plain_text(value) then
    return coalesce(pg_catalog.char_length(value) <= hidden.text_max(kind), true);
  end if;
  return value = hidden.text_normalize(value, kind) and hidden.text_problem(value, kind) is null;
end
$$;
comment on function hidden.is_clean_text(text, text) is
  'True for null or a text already in its normalised form that the text rules accept: what the CHECKs require.';
