"""Code generation from the one spec table (codegen/spec.toml) through Jinja2 templates."""
