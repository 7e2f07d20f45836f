"""Tooling around the capabilities: the `crm` CLI (`cli`), `crm dev` (`devserver`, `embedded`),
the migration runner (`migrate`, `sqlsplit`), the security lint (`lint`) and the OpenAPI document
(`openapi`). Tools call capability code and named queries; they hold no SQL of their own."""
