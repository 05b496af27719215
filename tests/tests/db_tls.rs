//! TLS between the hub and PostgreSQL, with rustls: a private server with `ssl = on`, a
//! certificate from a CA made in the test (rcgen) and TCP connections accepted only over
//! TLS (`hostssl`). The hub connects with `sslmode=require&sslrootcert=CA` (its `init
//! --store`, then commands on that hub), and refuses a server whose certificate another
//! CA signed — or that only the system's roots would have to vouch for — with an error
//! that names the certificate problem and what to do.

use std::path::Path;
use std::process::Output;

use spacesync_hub::store::Store;
use spacesync_hub::store::pg::PgStore;
use spacesync_pgtest::{PgServer, binaries};
use spacesync_tests::cluster::hub_bin;
use spacesync_tests::pki::{self, Ca};

fn hub(dir: &Path, args: &[&str]) -> Output {
    std::process::Command::new(hub_bin())
        .arg("--data")
        .arg(dir)
        .args(args)
        .output()
        .expect("run spacesync-hub")
}

fn tls_url(plain: &str, ca: &Path) -> String {
    plain.replace(
        "sslmode=disable",
        &format!("sslmode=require&sslrootcert={}", ca.display()),
    )
}

#[test]
fn the_hub_reaches_postgres_over_tls_and_refuses_a_certificate_of_another_ca() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = PgServer::start(&binaries()).expect("start PostgreSQL");
    // Databases first: the server takes only TLS afterwards.
    let db = server.create_database().expect("database");
    let other_db = server.create_database().expect("database");
    let ca = Ca::new("spacesync test database CA");
    let (cert, key) = ca.issue(&["127.0.0.1", "localhost"]);
    server.require_tls(&cert, &key).expect("TLS on");
    let ca_file = pki::write(tmp.path(), "db-ca.pem", &ca.pem());
    let stranger = pki::write(tmp.path(), "other-ca.pem", &Ca::new("another CA").pem());

    // Plain TCP is refused by the server now: what works below went over TLS.
    let plain = PgStore::open(&db).err().expect("plain refused").to_string();
    assert!(plain.contains("no encryption"), "{plain}");

    // The hub, trusting the database's CA.
    let url = tls_url(&db, &ca_file);
    let dir = tmp.path().join("hub");
    let out = hub(&dir, &["init", "--store", &url]);
    assert!(out.status.success(), "{out:?}");
    let out = hub(
        &dir,
        &[
            "token", "create", "--role", "ministry", "--label", "over TLS",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let out = hub(&dir, &["verify"]);
    assert!(out.status.success(), "{out:?}");
    let store = PgStore::open(&url).expect("open over TLS");
    assert!(
        store.scan(b"tok/").count() == 1,
        "the token is in the database"
    );
    drop(store);

    // Trusting another CA: refused, naming the certificate problem and the remedy.
    let wrong = tls_url(&other_db, &stranger);
    let err = PgStore::open(&wrong).err().expect("refused").to_string();
    assert!(err.contains("invalid peer certificate"), "{err}");
    assert!(err.contains("UnknownIssuer"), "{err}");
    assert!(err.contains("sslrootcert"), "{err}");
    let other_dir = tmp.path().join("other");
    let out = hub(&other_dir, &["init", "--store", &wrong]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("invalid peer certificate"), "{stderr}");
    assert!(
        !other_dir.join("hub.key").exists(),
        "a refused init leaves nothing"
    );

    // Without sslrootcert only the system's roots are trusted, and they do not know this CA.
    let system = other_db.replace("sslmode=disable", "sslmode=require");
    let err = PgStore::open(&system).err().expect("refused").to_string();
    assert!(err.contains("invalid peer certificate"), "{err}");

    // A CA file that is not one says so.
    let junk = pki::write(tmp.path(), "junk.pem", "not a certificate\n");
    let err = PgStore::open(&tls_url(&other_db, &junk))
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("sslrootcert"), "{err}");
    assert!(err.contains("junk.pem"), "{err}");
}
