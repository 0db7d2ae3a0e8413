//! Job logs in the database: numbered lines every replica reads.

use super::Postgres;
use crate::error::Result;
use crate::logs::Logs;

impl Logs for Postgres {
    fn append(&self, job: i64, text: &str) -> Result<u64> {
        let lines: Vec<&str> = text.lines().collect();
        let n = lines.len() as i64;
        self.tx(|tx| {
            // The head row numbers the lines and serialises appends of one job.
            let last: i64 = tx
                .query_one(
                    "INSERT INTO log_heads (job_id, lines) VALUES ($1, $2) \
                     ON CONFLICT (job_id) DO UPDATE SET lines = log_heads.lines + $2 \
                     RETURNING lines",
                    &[&job, &n],
                )?
                .try_get(0)?;
            let first = last - n + 1;
            let numbers: Vec<i64> = (first..=last).collect();
            tx.execute(
                "INSERT INTO log_lines (job_id, line, text) \
                 SELECT $1, * FROM unnest($2::BIGINT[], $3::TEXT[])",
                &[&job, &numbers, &lines],
            )?;
            Ok(last as u64)
        })
    }

    fn read(&self, job: i64, after: u64, limit: usize) -> Result<(Vec<(u64, String)>, u64)> {
        self.with(|c| {
            let total: i64 = c
                .query_opt("SELECT lines FROM log_heads WHERE job_id = $1", &[&job])?
                .map(|r| r.try_get(0))
                .transpose()?
                .unwrap_or(0);
            let rows = c.query(
                "SELECT line, text FROM log_lines WHERE job_id = $1 AND line > $2 \
                 ORDER BY line LIMIT $3",
                &[&job, &(after as i64), &(limit as i64)],
            )?;
            let lines = rows
                .iter()
                .map(|r| Ok((r.try_get::<_, i64>(0)? as u64, r.try_get(1)?)))
                .collect::<Result<_>>()?;
            Ok((lines, total as u64))
        })
    }
}
