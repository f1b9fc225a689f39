#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| apgate::fuzzing::sftp_stream(data));
