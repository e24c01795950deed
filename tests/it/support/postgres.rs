//! PostgreSQL for tests: the server of [`super::services`], and a schema of its own per
//! test, so tests run in parallel on one database and leave nothing behind.

/// The PostgreSQL of the tests that need one: see [`super::services`].
pub fn postgres_url() -> Option<String> {
    super::services::postgres_url()
}

/// A schema of its own for one test, dropped at the end; `url` points the store at it.
pub struct FreshSchema {
    admin: String,
    pub name: String,
    /// The database URL with the schema as its search path.
    pub url: String,
}

impl FreshSchema {
    pub fn new(url: &str) -> FreshSchema {
        let name = format!("kg_test_{:016x}", rand::random::<u64>());
        let schema = FreshSchema {
            admin: url.to_owned(),
            url: format!(
                "{url}{}options=-c%20search_path%3D{name}",
                if url.contains('?') { '&' } else { '?' }
            ),
            name,
        };
        schema.sql_admin(&format!("CREATE SCHEMA {}", schema.name));
        schema
    }

    /// Runs `sql` in the schema.
    pub fn sql(&self, sql: &str) {
        self.sql_admin(&format!("SET search_path TO {}; {sql}", self.name));
    }

    /// Runs `sql` on a thread and runtime of its own, so sync and async tests alike can call it.
    fn sql_admin(&self, sql: &str) {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap();
                    runtime.block_on(async {
                        let (client, connection) =
                            tokio_postgres::connect(&self.admin, tokio_postgres::NoTls)
                                .await
                                .unwrap();
                        tokio::spawn(connection);
                        client.batch_execute(sql).await.unwrap();
                    });
                })
                .join()
                .unwrap();
        });
    }
}

impl Drop for FreshSchema {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            self.sql_admin(&format!("DROP SCHEMA {} CASCADE", self.name));
        }
    }
}
