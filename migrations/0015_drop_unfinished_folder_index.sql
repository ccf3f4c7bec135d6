-- operations_unfinished_folder_idx (migration 0003) served the count of a folder's unfinished
-- operations that the quota check once ran. Since migration 0007 the count is kept in
-- folder_quotas and folder_releases, and no statement reads operations by folder among the
-- unfinished ones; those that read the unfinished operations at all (the sweeper, the relay,
-- the gauges) have operations_unfinished_idx and operations_unpublished_idx. Every accepted
-- operation still wrote an entry in it: one index entry and its WAL fewer per operation.

DROP INDEX operations_unfinished_folder_idx;
