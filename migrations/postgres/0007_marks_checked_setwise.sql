-- Nothing to change on PostgreSQL: its `marks` lost the row-by-row checks in 0006. (The SQLite
-- migration of the same number does the same for SQLite.)
SELECT 1;
