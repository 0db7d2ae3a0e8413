//! A pooled connection with its prepared statements: each statement is parsed and
//! planned once per connection, then only bound and run (one round trip instead of two,
//! and no planning on the server's CPU each time).

use std::collections::HashMap;

use postgres::types::ToSql;
use postgres::{Client, GenericClient, Row, Statement, Transaction};

use crate::error::Result;

type Params<'p> = &'p [&'p (dyn ToSql + Sync)];

/// A connection and the statements prepared on it.
pub(super) struct Conn {
    pub client: Client,
    statements: HashMap<String, Statement>,
}

impl Conn {
    pub fn new(client: Client) -> Self {
        Self {
            client,
            statements: HashMap::new(),
        }
    }

    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// The connection outside a transaction.
    pub fn db(&mut self) -> Db<'_, Client> {
        Db {
            c: &mut self.client,
            statements: &mut self.statements,
        }
    }

    /// Runs `f` in a transaction, committed when it returns `Ok`.
    pub fn transaction<T>(
        &mut self,
        f: impl FnOnce(&mut Db<'_, Transaction<'_>>) -> Result<T>,
    ) -> Result<T> {
        let mut tx = self.client.transaction()?;
        let v = f(&mut Db {
            c: &mut tx,
            statements: &mut self.statements,
        })?;
        tx.commit()?;
        Ok(v)
    }
}

/// A connection, or a transaction on one, whose statements are prepared once.
pub(super) struct Db<'a, C> {
    c: &'a mut C,
    statements: &'a mut HashMap<String, Statement>,
}

/// A transaction of the store.
pub(super) type Tx<'a, 'b> = Db<'a, Transaction<'b>>;

impl<C: GenericClient> Db<'_, C> {
    fn statement(&mut self, sql: &str) -> Result<Statement> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let s = self.c.prepare(sql)?;
        self.statements.insert(sql.to_owned(), s.clone());
        Ok(s)
    }

    pub fn query(&mut self, sql: &str, params: Params<'_>) -> Result<Vec<Row>> {
        let s = self.statement(sql)?;
        Ok(self.c.query(&s, params)?)
    }

    pub fn query_one(&mut self, sql: &str, params: Params<'_>) -> Result<Row> {
        let s = self.statement(sql)?;
        Ok(self.c.query_one(&s, params)?)
    }

    pub fn query_opt(&mut self, sql: &str, params: Params<'_>) -> Result<Option<Row>> {
        let s = self.statement(sql)?;
        Ok(self.c.query_opt(&s, params)?)
    }

    pub fn execute(&mut self, sql: &str, params: Params<'_>) -> Result<u64> {
        let s = self.statement(sql)?;
        Ok(self.c.execute(&s, params)?)
    }
}
