"""Legacy data in once, providers never missed (SPEC 13): `crm import` (`read`, `run`) and the
`pull-leads` job (`pull`)."""
