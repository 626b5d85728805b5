//! tracefs `format` files: parsing a record layout, and reading flag values from its print fmt, never panic; a
//! parsed layout has an id and at least one named field.
#![no_main]
use leaktrace::kernel::{parse_format, tracefs::print_fmt_flag};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(format) = parse_format("sys", "event", &text) {
        assert!(!format.fields.is_empty() && format.fields.iter().all(|f| !f.name.is_empty()));
        let _ = print_fmt_flag(&format.print_fmt, "__GFP_ACCOUNT");
    }
    let _ = print_fmt_flag(&text, "__GFP_ACCOUNT");
});
