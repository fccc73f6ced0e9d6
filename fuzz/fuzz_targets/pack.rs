//! Fuzzes the pack parser (what a pull reads from any server it is pointed at): any bytes
//! give a table or an error, never a panic, and every chunk a table gives lies between
//! the header and the table.
#![no_main]

use libfuzzer_sys::fuzz_target;
use warren::store::pack;

fuzz_target!(|data: &[u8]| {
    if let Ok(entries) = pack::parse(data) {
        let mut end = 16;
        for e in entries {
            assert_eq!(e.offset, end);
            end += u64::from(e.len);
        }
        assert!(end + 32 <= data.len() as u64);
    }
});
