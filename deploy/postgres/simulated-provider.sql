-- The demo stack's simulated payment provider keeps its ledger in a database of its own
-- (PAYMENTS_SIMULATOR_DATABASE_URL), as a real provider's is kept apart from the service's.
-- Run by the postgres image on its first start (an empty data volume).
CREATE DATABASE simulated_provider OWNER orders;
