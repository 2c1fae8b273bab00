"""Real services for tests: a PostgreSQL cluster with Supabase's roles, PostgREST, and friends."""
