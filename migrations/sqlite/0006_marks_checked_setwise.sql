-- Nothing to change on SQLite: its foreign-key checks on `marks` are cheap and stay. (The
-- PostgreSQL migration of the same number replaces them with a set-wise check; see there.)
SELECT 1;
