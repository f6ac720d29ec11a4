//! Splitting what the control socket delivered into the module's requests: frames of
//! `u32 length (LE) | payload` (see `src/protocol.rs`), which reads may cut anywhere.

use crate::protocol::MAX_FRAME;

/// A frame length the module never sends (0, or over `MAX_FRAME`): the stream is out of
/// step and nothing after it can be trusted.
#[derive(Debug, PartialEq, Eq)]
pub struct BadLength(pub usize);

/// The frame at the start of `buf`: its payload and how many bytes it takes, or `None`
/// until the whole of it is there. A bad length is reported as soon as it is read.
pub fn next_frame(buf: &[u8]) -> Result<Option<(&[u8], usize)>, BadLength> {
    let Some(header) = buf.first_chunk::<4>() else {
        return Ok(None);
    };
    let len = u32::from_le_bytes(*header) as usize;
    if len == 0 || len > MAX_FRAME {
        return Err(BadLength(len));
    }
    Ok(buf.get(4..4 + len).map(|payload| (payload, 4 + len)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Request;

    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut f = (payload.len() as u32).to_le_bytes().to_vec();
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn whole_frames_one_after_another() {
        let mut buf = frame(b"abc");
        buf.extend(frame(b"de"));
        assert_eq!(next_frame(&buf), Ok(Some((&b"abc"[..], 7))));
        assert_eq!(next_frame(&buf[7..]), Ok(Some((&b"de"[..], 6))));
        assert_eq!(next_frame(&buf[13..]), Ok(None));
    }

    #[test]
    fn a_frame_cut_anywhere_waits_for_the_rest() {
        let f = frame(b"hello");
        for cut in 0..f.len() {
            assert_eq!(next_frame(&f[..cut]), Ok(None), "cut at {cut}");
        }
        assert_eq!(next_frame(&f), Ok(Some((&b"hello"[..], f.len()))));
    }

    #[test]
    fn bad_lengths_are_reported_before_the_payload_arrives() {
        assert_eq!(next_frame(&0u32.to_le_bytes()), Err(BadLength(0)));
        let over = (MAX_FRAME as u32 + 1).to_le_bytes();
        assert_eq!(next_frame(&over), Err(BadLength(MAX_FRAME + 1)));
        let max = (MAX_FRAME as u32).to_le_bytes();
        assert_eq!(next_frame(&max), Ok(None));
    }

    #[test]
    fn the_module_encoding_splits_back_into_its_requests() {
        let reqs = [
            Request::Stop { run: 7 },
            Request::Spawn {
                run: 8,
                argv: vec![b"echo".to_vec(), b"a b".to_vec()],
                program: None,
                env: vec![(b"K".to_vec(), b"V".to_vec())],
                cwd: Some(b"/tmp".to_vec()),
                stdin: Some(b"entry".to_vec()),
                stop_signal: 15,
                stop_grace_ms: 500,
                keep_stdin: true,
                replies: true,
                limits: Default::default(),
            },
            Request::Feed {
                run: 8,
                data: b"line\n".to_vec(),
            },
            Request::CloseInput { run: 8 },
        ];
        let wire: Vec<u8> = reqs.iter().flat_map(Request::encode).collect();
        let (mut at, mut got) = (0, Vec::new());
        while let Some((payload, used)) = next_frame(&wire[at..]).unwrap() {
            got.push(Request::decode(payload).unwrap());
            at += used;
        }
        assert_eq!(at, wire.len());
        assert_eq!(got, reqs);
    }
}
