//! Unit tests of the token file: what loads, what is refused, with which line and message.

use super::*;

const ABC_SHA256: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

fn entry(name: &str, tenant: &str, role: &str, digest: &str) -> String {
    format!(
        "[[tokens]]\nname = \"{name}\"\ntenant = \"{tenant}\"\nrole = \"{role}\"\ntoken_sha256 = \"{digest}\"\n"
    )
}

/// The error `text` is refused with: its line and message.
fn refused(text: &str) -> (Option<usize>, String) {
    Tokens::parse(text).expect_err("the file is refused")
}

#[test]
fn a_token_becomes_its_caller() {
    let text = entry("ingest", "media", "user", ABC_SHA256) + "max_live_downloads = 100\n";
    let tokens = Tokens::parse(&text).unwrap();
    let caller = tokens.caller_for("abc").expect("abc is known");
    assert_eq!(
        caller,
        Caller {
            name: Arc::from("ingest"),
            tenant: Tenant::new("media"),
            role: Role::User,
            max_live_downloads: Some(100),
        }
    );
    assert_eq!(tokens.caller_for("abd"), None);
    assert_eq!(tokens.caller_for(""), None);
    assert_eq!(token_sha256("abc"), ABC_SHA256);
    // Upper-case hex is the same digest.
    let upper = Tokens::parse(&entry("a", "m", "admin", &ABC_SHA256.to_uppercase())).unwrap();
    assert_eq!(upper.caller_for("abc").unwrap().role, Role::Admin);
}

#[test]
fn bad_entries_are_refused_with_their_line() {
    let good = entry("one", "media", "reader", ABC_SHA256);
    let other = token_sha256("other");
    let cases: &[(String, usize, &str)] = &[
        (
            good.clone() + "colour = \"blue\"\n",
            6,
            "unknown field `colour`",
        ),
        (
            entry("two", "media", "owner", ABC_SHA256),
            4,
            "unknown variant `owner`",
        ),
        (entry("two", "media", "user", "abc"), 5, "64 hex digits"),
        (
            entry("two", "media", "user", &format!("+{}", &ABC_SHA256[1..])),
            5,
            "64 hex digits",
        ),
        (
            entry("two", "../etc", "user", ABC_SHA256),
            3,
            "not a valid tenant name",
        ),
        (
            entry("two", "Media", "user", ABC_SHA256),
            3,
            "not a valid tenant name",
        ),
        (
            entry("two", "", "user", ABC_SHA256),
            3,
            "not a valid tenant name",
        ),
        (
            entry("two", &"a".repeat(64), "user", ABC_SHA256),
            3,
            "not a valid tenant name",
        ),
        (
            entry("", "media", "user", ABC_SHA256),
            2,
            "1 to 64 characters",
        ),
        (good.clone() + "max_live_downloads = 0\n", 6, "at least 1"),
        (good.clone() + "max_live_downloads = -1\n", 6, ""),
        (
            good.clone() + &entry("one", "ml", "user", &other),
            7,
            "already used on line 2",
        ),
        (
            good.clone() + &entry("two", "ml", "user", ABC_SHA256),
            7,
            "same token_sha256 as `one`",
        ),
        (
            good.clone() + &entry("two", "media", "user", &other) + "max_live_downloads = 5\n",
            7,
            "tenant `media` has max_live_downloads unset on `one` but 5 on `two`",
        ),
        ("[[tokens]]\nname = \"x\"\n".into(), 1, "missing field"),
        ("tokens = [\n".into(), 1, "unclosed array"),
    ];
    for (text, line, message) in cases {
        let (got_line, got) = refused(text);
        assert_eq!(got_line, Some(*line), "{text}\n=> {got}");
        assert!(got.contains(message), "{text}\n=> {got}");
    }
}

#[test]
fn a_file_without_tokens_is_refused() {
    for empty in ["", "# nothing yet\n", "tokens = []\n"] {
        let (line, message) = refused(empty);
        assert_eq!(line, None);
        assert!(message.contains("has no [[tokens]]"), "{message}");
    }
}

#[test]
fn reload_swaps_the_set_or_keeps_the_old_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens.toml");
    std::fs::write(&path, entry("one", "media", "user", ABC_SHA256)).unwrap();
    let file = TokenFile::load(&path).unwrap();
    assert!(file.caller_for("abc").is_some());

    std::fs::write(&path, entry("two", "media", "user", &token_sha256("xyz"))).unwrap();
    assert_eq!(file.reload().unwrap(), 1);
    assert!(
        file.caller_for("abc").is_none(),
        "a removed token is revoked"
    );
    assert!(file.caller_for("xyz").is_some());

    std::fs::write(&path, "[[tokens]]\nname = 3\n").unwrap();
    let e = file.reload().unwrap_err();
    assert_eq!(e.line, Some(2));
    assert!(
        e.to_string()
            .starts_with(&format!("{}:2: ", path.display())),
        "{e}"
    );
    assert!(
        file.caller_for("xyz").is_some(),
        "a bad file keeps the old set"
    );

    std::fs::remove_file(&path).unwrap();
    let e = file.reload().unwrap_err();
    assert!(e.to_string().contains("cannot read the token file"), "{e}");
    assert!(file.caller_for("xyz").is_some());
}

#[test]
fn tokens_are_checked_and_generated() {
    assert!(check_token("s3cret-token_1").is_ok());
    for bad in ["", "two words", "tab\there", "naïve", "new\nline"] {
        assert!(check_token(bad).is_err(), "{bad:?}");
    }
    let (a, b) = (generate_token().unwrap(), generate_token().unwrap());
    assert_eq!(a.len(), 2 * GENERATED_TOKEN_BYTES);
    assert!(a.bytes().all(|c| c.is_ascii_hexdigit()) && check_token(&a).is_ok());
    assert_ne!(a, b);
}

#[test]
fn digests_compare_by_every_byte() {
    let a = [7u8; 32];
    let mut b = a;
    assert!(digests_equal(&a, &b));
    b[31] ^= 1;
    assert!(!digests_equal(&a, &b));
}
