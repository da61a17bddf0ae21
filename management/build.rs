//! The schema migrations are embedded at build time (`refinery::embed_migrations!`): a new or
//! changed file under `migrations/` rebuilds the crate.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
