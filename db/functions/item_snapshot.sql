-- The item snapshot rules (SPEC 7.2) behind the CHECK orders_item_snapshot_shape: the current
-- definitions of the two functions 0003_crm_core (the shape) and 0008_database_rules (the intake's
-- rules) created. The rules are unchanged; the arrays are walked by index (plain expressions)
-- instead of `for ... in select ... jsonb_array_elements(...)` (a query, with an executor started,
-- per array), the key list is one jsonb `-`, and there is no SET clause (SECURITY INVOKER, every
-- name qualified): both run on every order insert, inside the CHECK.

create or replace function hidden.is_item_snapshot(s jsonb)
returns boolean
language plpgsql immutable parallel safe
as $$
declare
  key text;
  images jsonb := s -> 'images';
  cached jsonb := s -> 'cached_images';
  i integer;
begin
  if s is null or pg_catalog.jsonb_typeof(s) <> 'object' then
    return false;
  end if;
  -- Required, non-blank strings.
  foreach key in array array['external_ref', 'title'] loop
    if pg_catalog.jsonb_typeof(s -> key) is distinct from 'string' or pg_catalog.btrim(s ->> key) = '' then
      return false;
    end if;
  end loop;
  -- Optional strings (absent or null allowed).
  foreach key in array array['item_id', 'brand', 'model', 'size', 'currency', 'main_photo_url', 'url'] loop
    if coalesce(pg_catalog.jsonb_typeof(s -> key), 'null') not in ('string', 'null') then
      return false;
    end if;
  end loop;
  if pg_catalog.jsonb_typeof(s -> 'url') = 'string' and not hidden.is_http_url(s ->> 'url') then
    return false;
  end if;
  if coalesce(pg_catalog.jsonb_typeof(s -> 'price'), 'null') not in ('number', 'null') then
    return false;
  end if;
  if pg_catalog.jsonb_typeof(s -> 'year') = 'number' then
    if (s ->> 'year')::numeric <> pg_catalog.trunc((s ->> 'year')::numeric) then
      return false;
    end if;
  elsif coalesce(pg_catalog.jsonb_typeof(s -> 'year'), 'null') <> 'null' then
    return false;
  end if;
  if coalesce(pg_catalog.jsonb_typeof(images), 'null') not in ('array', 'null') then
    return false;
  end if;
  if pg_catalog.jsonb_typeof(images) = 'array' then
    if pg_catalog.jsonb_array_length(images) > 20 then
      return false;
    end if;
    for i in 0 .. pg_catalog.jsonb_array_length(images) - 1 loop
      if pg_catalog.jsonb_typeof(images -> i) <> 'string' or not hidden.is_http_url(images ->> i) then
        return false;
      end if;
    end loop;
  end if;
  if coalesce(pg_catalog.jsonb_typeof(cached), 'null') not in ('array', 'null') then
    return false;
  end if;
  if pg_catalog.jsonb_typeof(cached) = 'array' then
    for i in 0 .. pg_catalog.jsonb_array_length(cached) - 1 loop
      if pg_catalog.jsonb_typeof(cached -> i) <> 'string' then
        return false;
      end if;
    end loop;
  end if;
  if coalesce(s ->> 'images_state', 'none') not in ('pending', 'cached', 'partial', 'failed', 'none')
     or coalesce(pg_catalog.jsonb_typeof(s -> 'images_state'), 'null') not in ('string', 'null') then
    return false;
  end if;
  return true;
end
$$;
comment on function hidden.is_item_snapshot(jsonb) is
  'The item snapshot shape of SPEC 7.2: external_ref and title required; images at most 20 http(s) URLs; images_state one of pending, cached, partial, failed, none.';

create or replace function hidden.item_snapshot_ok(s jsonb, external_item_ref text)
returns boolean
language plpgsql immutable parallel safe
as $$
declare
  pair text[];
  amount numeric;
  images jsonb;
  cached jsonb;
  i integer;
begin
  -- The shape (types, required fields, http(s) images, at most 20, images_state), then the
  -- intake's own rules on top.
  if not coalesce(hidden.is_item_snapshot(s), false) then
    return false;
  end if;
  -- Only the keys the intake writes (a PostgREST writer cannot park a megabyte under another name).
  if (s - '{item_id, url, external_ref, title, brand, model, year, size, price, currency, main_photo_url, images,
            cached_images, images_state}'::text[]) <> '{}'::jsonb
     or s ->> 'external_ref' is distinct from external_item_ref then
    return false;
  end if;
  -- Text fields: the text rules of their kind.
  foreach pair slice 1 in array array[['external_ref', 'external_ref'], ['title', 'title'], ['item_id', 'item_id'],
                                      ['brand', 'label'], ['model', 'label'], ['size', 'size']] loop
    if not hidden.is_clean_text(s ->> pair[1], pair[2]) then
      return false;
    end if;
  end loop;
  if (s ->> 'currency' is not null and not hidden.is_currency_code(s ->> 'currency'))
     or (s ->> 'url' is not null and not hidden.is_snapshot_url(s ->> 'url'))
     or (s ->> 'main_photo_url' is not null and not hidden.is_snapshot_url(s ->> 'main_photo_url')) then
    return false;
  end if;
  -- Money: at most cents within numeric(12, 2); a plausible model year.
  amount := (s ->> 'price')::numeric;
  if amount < 0 or amount > 9999999999.99 or amount <> pg_catalog.round(amount, 2)
     or (s ->> 'year')::numeric not between 1885 and 9999 then
    return false;
  end if;
  images := hidden.jsonb_array_or_empty(s -> 'images');
  for i in 0 .. pg_catalog.jsonb_array_length(images) - 1 loop
    if not hidden.is_snapshot_url(images ->> i) then
      return false;
    end if;
  end loop;
  -- cached_images: written by the image cache only (trigger); legacy rows may hold third-party URLs
  -- there until backfilled, so strings of URL length, at most 100 of them.
  cached := hidden.jsonb_array_or_empty(s -> 'cached_images');
  if pg_catalog.jsonb_array_length(cached) > 100 then
    return false;
  end if;
  for i in 0 .. pg_catalog.jsonb_array_length(cached) - 1 loop
    if pg_catalog.char_length(cached ->> i) > 2048 then
      return false;
    end if;
  end loop;
  return true;
end
$$;
comment on function hidden.item_snapshot_ok(jsonb, text) is
  'The item snapshot of SPEC 7.2 as the intake writes it: only its keys; external_ref (= the order''s external_item_ref) and title required; text fields pass the text rules of their kind (title 300, brand/model 100, item_id 100, size 20, external_ref 200); url, main_photo_url and at most 20 images are http(s) URLs of at most 2048 characters; price has at most cents; year is whole; images_state is known.';
