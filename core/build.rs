//! Embeds the schema: lists the files of `migrations/` (see migrations/README.md) as
//! `$OUT_DIR/migrations.rs`, an array of `db::migrations::MigrationFiles` read with
//! `include_str!`. The names and the rule for shared files are checked here, so a misnamed
//! file or a dialect's integer type in a shared file fails the build, not a start-up.

use std::{collections::BTreeMap, fmt::Write, path::Path};

#[derive(Default)]
struct Files {
    description: String,
    shared: Option<String>,
    postgres: Option<String>,
    sqlite: Option<String>,
}

fn main() {
    let manifest = std::env::var("CARGO_MANIFEST_DIR").unwrap();
    let dir = Path::new(&manifest).join("../migrations");
    println!("cargo:rerun-if-changed={}", dir.display());
    let dir = dir.canonicalize().expect("the migrations directory exists");

    let mut versions: BTreeMap<i64, Files> = BTreeMap::new();
    let mut errors = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("read migrations/") {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            errors.push(format!(
                "migrations/{name}/: migrations are files directly in migrations/ (see migrations/README.md, \
                 \"A pair from the old layout\")"
            ));
            continue;
        }
        let Some(stem) = name.strip_suffix(".sql") else {
            continue; // README.md
        };
        let (stem, backend) = match stem.rsplit_once('.') {
            Some((stem, backend @ ("postgres" | "sqlite"))) => (stem, Some(backend)),
            Some(_) => {
                errors.push(format!(
                    "migrations/{name}: only .postgres.sql and .sqlite.sql name a dialect"
                ));
                continue;
            }
            None => (stem, None),
        };
        let parsed = stem
            .split_once('_')
            .and_then(|(version, description)| Some((version.parse::<i64>().ok()?, description)))
            .filter(|(_, d)| {
                !d.is_empty()
                    && d.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            });
        let Some((version, description)) = parsed else {
            errors.push(format!(
                "migrations/{name}: expected VERSION_name[.postgres|.sqlite].sql"
            ));
            continue;
        };
        let path = path.to_str().expect("a UTF-8 path").to_owned();
        let files = versions.entry(version).or_default();
        if files.description.is_empty() {
            files.description = description.to_owned();
        } else if files.description != description {
            errors.push(format!(
                "migrations/{name}: version {version} is already named {:?}",
                files.description
            ));
        }
        if backend.is_none() {
            let text = std::fs::read_to_string(&path).expect("read a migration");
            if let Some(word) = dialect_word(&text) {
                errors.push(format!(
                    "migrations/{name}: {word} in a shared file; write integers as BIGINT (SQLite reads it \
                     as INTEGER) and put what the dialects spell differently in .postgres.sql/.sqlite.sql"
                ));
            }
        }
        let slot = match backend {
            None => &mut files.shared,
            Some("postgres") => &mut files.postgres,
            Some(_) => &mut files.sqlite,
        };
        *slot = Some(path);
    }
    if !errors.is_empty() {
        panic!("migrations/:\n  {}", errors.join("\n  "));
    }

    let mut out = String::from("[\n");
    for (version, files) in &versions {
        let file = |f: &Option<String>| match f {
            Some(path) => format!("Some(include_str!({path:?}))"),
            None => "None".to_owned(),
        };
        writeln!(
            out,
            "    MigrationFiles {{ version: {version}, description: {:?}, shared: {}, postgres: {}, sqlite: {} }},",
            files.description.replace('_', " "),
            file(&files.shared),
            file(&files.postgres),
            file(&files.sqlite),
        )
        .unwrap();
    }
    out.push(']');
    let out_path = Path::new(&std::env::var("OUT_DIR").unwrap()).join("migrations.rs");
    std::fs::write(out_path, out).unwrap();
}

/// A type word that means different things to the two dialects, outside comments: PostgreSQL's
/// INTEGER/INT is 32 bits (what sqlx reads as i64 must be BIGINT), and serial or rowid
/// columns are made differently.
fn dialect_word(sql: &str) -> Option<&'static str> {
    const WORDS: [&str; 6] = ["INTEGER", "INT", "INT4", "SMALLINT", "SERIAL", "BIGSERIAL"];
    for line in sql.lines() {
        let code = line.split("--").next().unwrap_or("");
        for word in code.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if let Some(w) = WORDS.iter().find(|w| w.eq_ignore_ascii_case(word)) {
                return Some(w);
            }
        }
    }
    None
}
