//! Property tests of the parsers that read client bytes and operator text, through the
//! library's public API (no directory needed): the LDAPMessage envelope
//! (`frame::peek`), the byte-level message readers (`message::*`), DNs (`Dn::parse`),
//! RFC 4515 filters (`filter::parse`) and the configuration (`Config::parse`).
//!
//! For every input: no panic, and no allocation out of proportion to the input (a
//! length field that claims 2^31 bytes in a 6-byte buffer must not make anything reserve
//! them). Allocation is measured by a counting global allocator, per thread.
//!
//! About 256 cases per property by default; more with `PROPTEST_CASES=5000 cargo test
//! --test parsers_prop`.

use ldap_pam_proxy::config::Config;
use ldap_pam_proxy::dn::Dn;
use ldap_pam_proxy::frame;
use ldap_pam_proxy::message;
use proptest::prelude::*;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// Counts the bytes this thread asks the allocator for.
struct Counting;

thread_local! {
    static ALLOCATED: Cell<usize> = const { Cell::new(0) };
}

fn count(bytes: usize) {
    let _ = ALLOCATED.try_with(|a| a.set(a.get().saturating_add(bytes)));
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        System.alloc_zeroed(layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size.saturating_sub(layout.size()));
        System.realloc(ptr, layout, new_size)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Runs `f` and returns what it returned and how many bytes it allocated (in total, on
/// this thread: an upper bound of what it held at once).
fn allocated_by<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let before = ALLOCATED.with(Cell::get);
    let r = f();
    (r, ALLOCATED.with(Cell::get) - before)
}

/// What parsing `input_len` bytes of input may allocate: proportional to the input, with
/// room for error messages and small tables.
fn budget(input_len: usize) -> usize {
    16 * input_len + 64 * 1024
}

const LIMIT: usize = 2 * 1024 * 1024;

// ---------------------------------------------------------------------------------------
// Generators of BER-shaped bytes: trees of TLVs with every length form, including
// lengths that lie.
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum LenForm {
    Minimal,
    /// Long form with this many octets (leading zeros; more than 4 is refused by some).
    Long(u8),
    Indefinite,
    /// The true length plus this (truncated or overrunning contents).
    Lie(i16),
    /// A length claiming this much, whatever follows.
    Claim(u64),
}

fn len_form() -> impl Strategy<Value = LenForm> {
    prop_oneof![
        10 => Just(LenForm::Minimal),
        2 => (1u8..=9).prop_map(LenForm::Long),
        1 => Just(LenForm::Indefinite),
        2 => (-3i16..=3).prop_map(LenForm::Lie),
        2 => prop_oneof![
            Just(1u64 << 31),
            Just((1u64 << 31) - 1),
            Just(1u64 << 32),
            Just(u32::MAX as u64),
            Just(u64::MAX),
            Just(LIMIT as u64 + 1),
            any::<u64>(),
        ]
        .prop_map(LenForm::Claim),
    ]
}

fn length_octets(n: u64, form: &LenForm) -> Vec<u8> {
    let long = |n: u64, k: usize| {
        let k = k.clamp(1, 126);
        let mut out = vec![0x80 | k as u8];
        for i in (0..k).rev() {
            out.push(if i < 8 { (n >> (8 * i)) as u8 } else { 0 });
        }
        out
    };
    let needed = ((64 - n.leading_zeros()) as usize).div_ceil(8).max(1);
    match form {
        LenForm::Minimal | LenForm::Lie(_) if n < 0x80 => vec![n as u8],
        LenForm::Minimal | LenForm::Lie(_) => long(n, needed),
        LenForm::Long(k) => long(n, (*k as usize).max(needed)),
        LenForm::Indefinite => vec![0x80],
        LenForm::Claim(c) => long(*c, ((64 - c.leading_zeros()) as usize).div_ceil(8).max(1)),
    }
}

#[derive(Debug, Clone)]
enum Tree {
    Leaf(u8, Vec<u8>, LenForm),
    Node(u8, Vec<Tree>, LenForm),
}

impl Tree {
    fn encode(&self) -> Vec<u8> {
        let (tag, content, form) = match self {
            Tree::Leaf(tag, content, form) => (*tag, content.clone(), form),
            Tree::Node(tag, children, form) => {
                (*tag, children.iter().flat_map(Tree::encode).collect(), form)
            }
        };
        let claimed = match form {
            LenForm::Lie(d) => (content.len() as i64 + *d as i64).max(0) as u64,
            _ => content.len() as u64,
        };
        let mut out = vec![tag];
        out.extend(length_octets(claimed, form));
        out.extend_from_slice(&content);
        if matches!(form, LenForm::Indefinite) {
            out.extend_from_slice(&[0, 0]);
        }
        out
    }
}

/// Tags that LDAP messages use, and a few that they do not.
fn tag() -> impl Strategy<Value = u8> {
    prop_oneof![
        6 => prop_oneof![
            Just(0x02u8), Just(0x04), Just(0x0a), Just(0x01), Just(0x30), Just(0x31),
            Just(0x80), Just(0x81), Just(0x87), Just(0x8a), Just(0x8b), Just(0xa0),
            Just(0xa3), Just(0x60), Just(0x61), Just(0x63), Just(0x42), Just(0x50),
            Just(0x77), Just(0x78), Just(0x0c), Just(0x1f),
        ],
        1 => any::<u8>(),
    ]
}

fn tree() -> BoxedStrategy<Tree> {
    let leaf = (
        tag(),
        proptest::collection::vec(any::<u8>(), 0..24),
        len_form(),
    )
        .prop_map(|(t, c, f)| Tree::Leaf(t, c, f));
    leaf.prop_recursive(4, 48, 6, |inner| {
        (tag(), proptest::collection::vec(inner, 0..6), len_form())
            .prop_map(|(t, c, f)| Tree::Node(t, c, f))
    })
    .boxed()
}

/// A length form that is mostly right.
fn mostly_minimal() -> impl Strategy<Value = LenForm> {
    prop_oneof![8 => Just(LenForm::Minimal), 1 => len_form()]
}

fn leaf(
    tag: impl Strategy<Value = u8>,
    content: impl Strategy<Value = Vec<u8>>,
) -> impl Strategy<Value = Tree> {
    (tag, content, mostly_minimal()).prop_map(|(t, c, f)| Tree::Leaf(t, c, f))
}

fn text(words: &'static [&'static str]) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => proptest::sample::select(words).prop_map(|w| w.as_bytes().to_vec()),
        1 => proptest::collection::vec(any::<u8>(), 0..16),
    ]
}

const DNS: &[&str] = &[
    "uid=alice,ou=People,dc=example,dc=com",
    "",
    "cn=schema",
    "uid=al\\ice,dc=x",
];
const OIDS: &[&str] = &[
    "1.3.6.1.4.1.4203.1.11.3",
    "1.3.6.1.4.1.4203.1.11.1",
    "1.3.6.1.4.1.1466.20037",
    "2.16.840.1.113730.3.4.18",
    "2.16.840.1.113730.3.4.12",
    "2.16.840.1.113730.3.4.16\0",
    "",
];

/// A protocolOp: its tag and its elements, shaped like a real request (bind, search,
/// extended, abandon, unbind) with odd parts, or anything.
fn protocol_op() -> BoxedStrategy<(u8, Vec<Tree>)> {
    let small_int = || proptest::collection::vec(any::<u8>(), 0..3);
    let bind = (
        leaf(prop_oneof![4 => Just(0x02u8), 1 => Just(0x0a)], prop_oneof![4 => Just(vec![3u8]), 1 => small_int()]),
        leaf(prop_oneof![4 => Just(0x04u8), 1 => Just(0x0c)], text(DNS)),
        prop_oneof![
            3 => leaf(prop_oneof![4 => Just(0x80u8), 1 => any::<u8>()], text(&["secret", ""])),
            1 => (leaf(Just(0x04u8), text(&["PLAIN", "EXTERNAL", "plain"])), proptest::option::of(leaf(Just(0x04u8), text(&["\0alice\0pw"]))), mostly_minimal())
                .prop_map(|(m, c, f)| Tree::Node(0xa3, std::iter::once(m).chain(c).collect(), f)),
        ],
        proptest::collection::vec(tree(), 0..2),
    )
        .prop_map(|(v, n, a, extra)| (0x60u8, [vec![v, n, a], extra].concat()))
        .boxed();
    let search = (
        leaf(Just(0x04u8), text(DNS)),
        leaf(Just(0x0au8), small_int()),
        proptest::collection::vec(tree(), 0..7),
    )
        .prop_map(|(b, sc, rest)| (0x63u8, [vec![b, sc], rest].concat()))
        .boxed();
    let extended = (
        leaf(prop_oneof![4 => Just(0x80u8), 1 => any::<u8>()], text(OIDS)),
        proptest::option::of(leaf(
            Just(0x81u8),
            proptest::collection::vec(any::<u8>(), 0..8),
        )),
    )
        .prop_map(|(n, v)| (0x77u8, std::iter::once(n).chain(v).collect()))
        .boxed();
    prop_oneof![
        3 => bind,
        2 => search,
        2 => extended,
        1 => (prop_oneof![Just(0x50u8), Just(0x42), any::<u8>()], proptest::collection::vec(tree(), 0..5)).boxed(),
    ]
    .boxed()
}

/// A Control: SEQUENCE { OID, [criticality], [value] }, parts possibly odd.
fn control_tree() -> BoxedStrategy<Tree> {
    (
        leaf(prop_oneof![6 => Just(0x04u8), 1 => any::<u8>()], text(OIDS)),
        proptest::option::of(leaf(
            Just(0x01u8),
            prop_oneof![Just(vec![0xff]), Just(vec![0]), small_bytes()],
        )),
        proptest::option::of(leaf(Just(0x04u8), small_bytes())),
        proptest::collection::vec(tree(), 0..2),
        prop_oneof![6 => Just(0x30u8), 1 => any::<u8>()],
        mostly_minimal(),
    )
        .prop_map(|(oid, crit, value, extra, tag, f)| {
            let children = std::iter::once(oid)
                .chain(crit)
                .chain(value)
                .chain(extra)
                .collect();
            Tree::Node(tag, children, f)
        })
        .boxed()
}

fn small_bytes() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..6)
}

/// An LDAPMessage-shaped tree: SEQUENCE { messageID, protocolOp, [controls] }, each
/// part possibly odd.
fn ldap_message() -> BoxedStrategy<Vec<u8>> {
    (
        prop_oneof![
            6 => (1u32..=0x7fff_ffff).prop_map(|n| {
                let b = n.to_be_bytes();
                let skip = b.iter().take_while(|x| **x == 0).count().min(3);
                let mut v = b[skip..].to_vec();
                if v[0] & 0x80 != 0 { v.insert(0, 0); }
                v
            }),
            1 => proptest::collection::vec(any::<u8>(), 0..7),
        ],
        mostly_minimal(),
        protocol_op(),
        mostly_minimal(),
        proptest::option::of(proptest::collection::vec(
            prop_oneof![4 => control_tree(), 1 => tree()],
            0..4,
        )),
        mostly_minimal(),
        mostly_minimal(),
    )
        .prop_map(
            |(id, id_len, (op, op_children), op_len, controls, ctl_len, outer_len)| {
                let mut children = vec![
                    Tree::Leaf(0x02, id, id_len),
                    Tree::Node(op, op_children, op_len),
                ];
                if let Some(c) = controls {
                    children.push(Tree::Node(0xa0, c, ctl_len));
                }
                Tree::Node(0x30, children, outer_len).encode()
            },
        )
        .boxed()
}

/// Bytes to read: LDAP-shaped, BER-shaped, or anything at all.
fn client_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => ldap_message(),
        2 => tree().prop_map(|t| t.encode()),
        1 => proptest::collection::vec(any::<u8>(), 0..64),
    ]
}

/// Every reader of client bytes, on `bytes`: none panics, none allocates more than the
/// input warrants.
fn read_everything(bytes: &[u8]) -> Result<(), TestCaseError> {
    let ((), used) = allocated_by(|| {
        for limit in [LIMIT, usize::MAX, 0, 7] {
            if let Ok(Some(env)) = frame::peek(bytes, limit) {
                assert!(env.len <= limit, "{env:?} over the limit {limit}");
            }
        }
        let _ = message::controls(bytes);
        let _ = ldap_pam_proxy::bind_request::parse(bytes);
        let _ = message::result_code(bytes);
        let _ = message::abandon_target(bytes);
        let _ = message::search_base(bytes);
        let _ = message::extended_oid(bytes);
        let control = message::control("2.16.840.1.113730.3.4.18", true, Some(b"dn:uid=a,dc=x"));
        let readable = message::controls(bytes).is_ok();
        if let (Ok(out), true) = (message::with_control(bytes, &control), readable) {
            // The rewritten message is read back as a message with that control.
            let controls = message::controls(&out).expect("a rewritten message reads back");
            assert_eq!(
                controls.first().map(|c| c.oid),
                Some("2.16.840.1.113730.3.4.18"),
                "the proxy's control comes first: {controls:?}"
            );
        }
    });
    prop_assert!(
        used <= budget(bytes.len()),
        "{used} bytes allocated reading {} bytes",
        bytes.len()
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// The envelope and message readers on LDAP-shaped, BER-shaped and arbitrary bytes.
    #[test]
    fn message_readers_never_panic_nor_overallocate(bytes in client_bytes()) {
        read_everything(&bytes)?;
        // Every prefix too: a frame arrives in pieces.
        for cut in [1, bytes.len() / 2, bytes.len().saturating_sub(1)] {
            read_everything(&bytes[..cut.min(bytes.len())])?;
        }
    }

    /// What `peek` says about a message agrees with the bytes: the length is the
    /// message's, and the messageID is the one written.
    #[test]
    fn peek_reports_what_was_written(id in 0i32..=i32::MAX, op in any::<u8>(), body in proptest::collection::vec(any::<u8>(), 0..300)) {
        let mut content = vec![0x02];
        let idb = {
            let b = id.to_be_bytes();
            let skip = b.iter().take_while(|x| **x == 0).count().min(3);
            let mut v = b[skip..].to_vec();
            if v[0] & 0x80 != 0 { v.insert(0, 0); }
            v
        };
        content.push(idb.len() as u8);
        content.extend(&idb);
        content.push(op);
        content.extend(length_octets(body.len() as u64, &LenForm::Minimal));
        content.extend(&body);
        let mut msg = vec![0x30];
        msg.extend(length_octets(content.len() as u64, &LenForm::Minimal));
        msg.extend(&content);
        match frame::peek(&msg, LIMIT) {
            Ok(Some(env)) => {
                prop_assert_eq!(env.len, msg.len());
                prop_assert_eq!(env.msgid, id);
                prop_assert_eq!(env.op, op);
            }
            // A 5-octet messageID (ids needing a sign octet) is refused; nothing else.
            other => prop_assert!(idb.len() > 4, "{:?}", other),
        }
    }

    /// DNs: any text, and DN-shaped text with escapes, quotes, separators and spaces.
    #[test]
    fn dn_parse_never_panics_nor_overallocates(text in prop_oneof![
        any::<String>(),
        "([a-zA-Z0-9.;-]{0,4} ?= ?([a-zA-Z ,;+\"#<>=]|\\\\[0-9a-fA-F]{0,2}|\\\\.|[\\u{80}-\\u{10ffff}]){0,12} ?[,;+]? ?){0,6}",
    ]) {
        let (parsed, used) = allocated_by(|| {
            let d = Dn::parse(&text);
            if let Ok(d) = &d {
                let _ = d.to_string();
                let _ = d.first_rdn_value();
                let _ = d.is_within(d);
            }
            d.is_ok()
        });
        let _ = parsed;
        prop_assert!(used <= budget(text.len()) + 64 * text.len(), "{} bytes for {:?}", used, text);
    }

    /// Filters: any text, and filter-shaped text.
    #[test]
    fn filter_parse_never_panics_nor_overallocates(text in prop_oneof![
        any::<String>(),
        "([(&|!)]{0,3}[a-zA-Z0-9;:.-]{0,6}(=|~=|>=|<=|:=|:dn:=|:1.2.3:=)?[a-z*\\\\()0-9 ]{0,10}[)]{0,3}){0,8}",
    ]) {
        let (_, used) = allocated_by(|| ldap_pam_proxy::filter::parse(&text).is_ok());
        prop_assert!(used <= budget(text.len()) + 256 * text.len(), "{} bytes for {:?}", used, text);
    }

    /// Configuration text: any text, and TOML built from the real keys with odd values.
    #[test]
    fn config_parse_never_panics(text in prop_oneof![
        any::<String>(),
        config_text(),
    ]) {
        let _ = Config::parse(&text, "prop.toml");
    }
}

/// TOML with the real tables and keys, each given a value of some kind.
fn config_text() -> impl Strategy<Value = String> {
    let value = prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        Just("0".to_owned()),
        Just("-1".to_owned()),
        Just("9223372036854775807".to_owned()),
        "\"[0-9]{0,21}(ms|s|m|h|d|)\"",
        "\"[ -~]{0,20}\"",
        Just("\"127.0.0.1:0\"".to_owned()),
        Just("\"ldap://127.0.0.1:1\"".to_owned()),
        Just("[\"ldap://127.0.0.1:1\", \"ldaps://[::1]:99999\"]".to_owned()),
        Just("[\"rdn\", \"entry\", \"dn\", \"x\"]".to_owned()),
        Just("[\"dc=example,dc=com\", \"cn=\\\\zz\"]".to_owned()),
        Just("\"(&(a=b)(!(c=*)))\"".to_owned()),
        Just("\"((((\"".to_owned()),
        Just("true".to_owned()),
        prop_oneof![
            Just("\"error\""),
            Just("\"allow\""),
            Just("\"ignore\""),
            Just("\"forward\""),
            Just("\"reject\""),
            Just("\"proxy-authz\""),
            Just("\"service\""),
            Just("\"1.3\""),
            Just("\"/etc/hostname\""),
            Just("\"/nonexistent\""),
        ]
        .prop_map(str::to_owned),
        Just("{}".to_owned()),
        Just("[]".to_owned()),
    ];
    let keys: &[(&str, &[&str])] = &[
        ("[listen]", &["address", "ldaps_address", "require_tls"]),
        ("[tls]", &["certificate", "key", "client_ca", "min_version"]),
        ("[runtime]", &["worker_threads"]),
        ("[log]", &["level"]),
        (
            "[backend]",
            &[
                "uris",
                "connect_timeout",
                "service_dn",
                "service_password_file",
                "root_dn",
                "starttls",
                "ca",
            ],
        ),
        (
            "[bind]",
            &[
                "include_suffixes",
                "exclude_suffixes",
                "missing_suffix",
                "unmatched",
                "identity",
                "insecure",
            ],
        ),
        (
            "[pam]",
            &[
                "workers",
                "queue",
                "max_attempts_per_minute",
                "coalesce_grace",
            ],
        ),
        (
            "[limits]",
            &[
                "max_message_size",
                "max_connections",
                "idle_timeout",
                "shutdown_grace",
            ],
        ),
        ("[metrics]", &["listen"]),
        (
            "[[route]]",
            &[
                "name",
                "filter",
                "pam_service",
                "id_map",
                "id_attr",
                "fallback",
                "secure",
                "timeout",
                "include_suffixes",
                "exclude_suffixes",
                "passcode_delimiter",
                "max_concurrent",
                "success_cache",
            ],
        ),
    ];
    let tables: Vec<(String, Vec<String>)> = keys
        .iter()
        .map(|(t, ks)| (t.to_string(), ks.iter().map(|k| k.to_string()).collect()))
        .collect();
    proptest::collection::vec(
        (
            0..tables.len(),
            proptest::collection::vec((any::<prop::sample::Index>(), value), 0..5),
        ),
        0..8,
    )
    .prop_map(move |sections| {
        // Each table once (keys once each), except [[route]], which may repeat; listen
        // and backend start with what a minimal configuration needs.
        let mut merged: std::collections::BTreeMap<
            String,
            std::collections::BTreeMap<String, String>,
        > = std::collections::BTreeMap::new();
        merged
            .entry("[listen]".into())
            .or_default()
            .insert("address".into(), "\"127.0.0.1:1\"".into());
        merged
            .entry("[backend]".into())
            .or_default()
            .insert("uris".into(), "[\"ldap://127.0.0.1:2\"]".into());
        let mut text = String::new();
        for (t, entries) in sections {
            let (table, ks) = &tables[t];
            let pairs = entries
                .into_iter()
                .map(|(k, v)| (ks[k.index(ks.len())].clone(), v));
            if table == "[[route]]" {
                let route: std::collections::BTreeMap<String, String> = pairs.collect();
                text += "[[route]]\n";
                for (k, v) in route {
                    text += &format!("{k} = {v}\n");
                }
            } else {
                merged.entry(table.clone()).or_default().extend(pairs);
            }
        }
        let mut head = String::new();
        for (table, entries) in merged {
            head += &format!("{table}\n");
            for (k, v) in entries {
                head += &format!("{k} = {v}\n");
            }
        }
        head + &text
    })
}

/// Lengths claiming 2^31 bytes and more in a buffer of a few bytes: every reader answers
/// at once (error, or "need more") without reserving what the length claims.
#[test]
fn huge_claimed_lengths_in_tiny_buffers_allocate_nothing_like_them() {
    let claims: Vec<Vec<u8>> = vec![
        vec![0x84, 0x80, 0x00, 0x00, 0x00],
        vec![0x84, 0x7f, 0xff, 0xff, 0xff],
        vec![0x84, 0xff, 0xff, 0xff, 0xff],
        vec![0x88, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
        vec![0x83, 0xff, 0xff, 0xff],
    ];
    for claim in &claims {
        let mut inputs = Vec::new();
        // As the message length.
        inputs.push([&[0x30][..], claim, &[0x02, 0x01, 0x01, 0x60]].concat());
        // As an inner length: the messageID, the protocolOp, the name of a bind.
        inputs.push([&[0x30, 0x10, 0x02][..], claim, &[0x01]].concat());
        inputs.push([&[0x30, 0x10, 0x02, 0x01, 0x01, 0x60][..], claim, &[0x02]].concat());
        inputs.push(
            [
                &[
                    0x30, 0x10, 0x02, 0x01, 0x01, 0x60, 0x0b, 0x02, 0x01, 0x03, 0x04,
                ][..],
                claim,
                b"u",
            ]
            .concat(),
        );
        // As the controls' length.
        inputs.push([&[0x30, 0x10, 0x02, 0x01, 0x01, 0x42, 0x00, 0xa0][..], claim].concat());
        for input in inputs {
            let (peeked, used) = allocated_by(|| frame::peek(&input, LIMIT));
            assert!(
                !matches!(peeked, Ok(Some(e)) if e.len > LIMIT),
                "{input:02x?}: {peeked:?}"
            );
            assert!(used < 4096, "peek allocated {used} bytes for {input:02x?}");
            read_everything(&input).unwrap_or_else(|e| panic!("{input:02x?}: {e}"));
            assert!(
                ldap_pam_proxy::bind_request::parse(&input).is_err(),
                "{input:02x?}"
            );
        }
    }
}

/// The measuring tool itself: an allocation made inside is counted, outside is not.
#[test]
fn the_allocation_counter_counts() {
    let (v, used) = allocated_by(|| vec![1u8; 1 << 20]);
    assert!(used >= 1 << 20, "{used}");
    let (_, used) = allocated_by(|| v.len());
    assert_eq!(used, 0);
}

/// Deeply nested filters are refused, not recursed into until the stack overflows.
#[test]
fn deeply_nested_filters_are_refused() {
    for (open, depth) in [("(&", 100_000), ("(|", 10_000), ("(!", 100_000)] {
        let text = format!("{}(a=b){}", open.repeat(depth), ")".repeat(depth));
        // On a thread with a small stack, unbounded recursion would abort the test.
        let r = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || ldap_pam_proxy::filter::parse(&text).is_ok())
            .unwrap()
            .join()
            .unwrap();
        assert!(!r, "{open} × {depth} parsed");
    }
}
