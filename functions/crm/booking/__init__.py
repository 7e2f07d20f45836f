"""The booking intake (SPEC 7.1): `intake` validates a booking and makes it with one SQL call
(`queries.sql`); the rules are `create_booking` in db/functions/booking.sql and its triggers."""
