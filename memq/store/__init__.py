"""The job store: schema, backends and the Store API."""
