//! The migrations are compiled into the store (`sqlx::migrate!`); a migration added or
//! changed rebuilds it.

fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
