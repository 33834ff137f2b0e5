//! `detrace replay` on files that are not (whole) recordings: no root, no daemons. Each case
//! says what it is and the exit status says it failed, or the partial file replays.

use std::process::Output;

use detrace_tests::detrace_bin;

fn replay(name: &str, content: &[u8]) -> Output {
    let dir = std::env::temp_dir().join(format!("detrace-replay-faults-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join(name);
    std::fs::write(&file, content).expect("write the file");
    let out = std::process::Command::new(detrace_bin())
        .arg("replay")
        .arg(&file)
        .output()
        .expect("run detrace");
    let _ = std::fs::remove_file(&file);
    out
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn empty_or_foreign_files_are_refused() {
    let cases: [(&str, &[u8], &str); 4] = [
        ("empty", b"", "it is empty"),
        ("text", b"hello\nworld\n", "no header line"),
        ("json", b"{\"a\": 1}\n", "no header line"),
        ("binary", b"\x7fELF\x02\x01\x01\0\xff\xfe\xfd", "not text"),
    ];
    for (name, content, why) in cases {
        let out = replay(name, content);
        let err = stderr(&out);
        assert!(!out.status.success(), "{name}: rc 0; stderr {err}");
        assert!(
            err.contains("is not a detrace recording") && err.contains(why),
            "{name}: {err}"
        );
        assert!(!err.contains("panicked"), "{name}: {err}");
    }
}

#[test]
fn a_cut_off_last_line_is_said_and_the_rest_replays() {
    let header =
        r#"{"type":"header","version":1,"clock_offset_ns":0,"command":"record","ports":{}}"#;
    let text = format!("{header}\n{}", &header[..20]);
    let out = replay("cut", text.as_bytes());
    let err = stderr(&out);
    assert!(out.status.success(), "rc {:?}: {err}", out.status);
    assert!(err.contains(":2: the last line is cut off"), "{err}");
}
