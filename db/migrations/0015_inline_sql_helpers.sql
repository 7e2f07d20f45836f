-- Booking speed (issue 17): the immutable one-expression SQL helpers the CHECKs and triggers call
-- on every write lose their `set search_path`, so the planner inlines them. A SQL function with a SET
-- clause is never inlined: each call was a full function call (about 30-150 µs here), and the
-- constant `kind` arguments of the text rules could not fold (`text_max('title')` is 300 at plan
-- time once inlined; `is_currency_code`'s 170-code array is parsed once per plan, not per call).
--
-- Safe without a fixed search_path: they are SECURITY INVOKER (no privilege is gained by calling
-- them), every function and cast in their bodies is schema-qualified, and operators resolve from
-- pg_catalog first, which is searched before any schema unless a search_path names it later. The
-- definer functions that call them keep `search_path = ''`, and that is the path an inlined body
-- then runs with. The rules themselves are unchanged (same bodies, same results).
alter function hidden.text_max(text) reset search_path;
alter function hidden.text_multiline(text) reset search_path;
alter function hidden.text_normalize(text, text) reset search_path;
alter function hidden.text_problem(text, text) reset search_path;
alter function hidden.is_clean_text(text, text) reset search_path;
alter function hidden.is_http_url(text) reset search_path;
alter function hidden.is_snapshot_url(text) reset search_path;
alter function hidden.is_currency_code(text) reset search_path;
alter function hidden.jsonb_array_or_empty(jsonb) reset search_path;
alter function hidden.search_normalize(text) reset search_path;
alter function hidden.customer_search_text(text, text, text) reset search_path;
