//! The agent protocol's frame decoder on any bytes, fed in pieces as a
//! socket would deliver them; what decodes must encode back the same.

#![no_main]

use husk::agent::protocol::{encode_data, encode_message, Frame, FrameReader};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the piece size.
    let Some((&piece, rest)) = data.split_first() else {
        return;
    };
    let piece = usize::from(piece).max(1);
    let mut reader = FrameReader::default();
    for chunk in rest.chunks(piece) {
        reader.push(chunk);
        loop {
            match reader.next_frame() {
                Ok(Some(Ok(frame))) => {
                    let mut again = Vec::new();
                    match &frame {
                        Frame::Control(m) => encode_message(m, &mut again),
                        Frame::Data { id, stream, data } => encode_data(*id, *stream, data, &mut again),
                    }
                    let (back, used) = husk::agent::protocol::decode(&again).unwrap().unwrap();
                    assert_eq!(used, again.len());
                    assert_eq!(back, Ok(frame));
                }
                Ok(Some(Err(_))) => {}
                Ok(None) => break,
                // The stream cannot be followed past a framing error.
                Err(_) => return,
            }
        }
        // Never more than one frame (and the last piece) buffered.
        assert!(reader.pending() <= husk::agent::protocol::MAX_FRAME + 4 + piece);
    }
});
