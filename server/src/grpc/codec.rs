//! The protobuf codec of `backgroundtransfer.v1`: prost's, except that a message that does not
//! decode is the caller's mistake (INVALID_ARGUMENT, with a readable message), not a server
//! fault (tonic's INTERNAL). The generated code uses it through `codec_path` in build.rs.

use tonic::codec::{BufferSettings, DecodeBuf, Decoder};
use tonic::{Code, Status};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// prost encoding and decoding, with decode failures reported as INVALID_ARGUMENT.
#[derive(Debug)]
pub struct ProtoCodec<T, U>(ProstCodec<T, U>);

impl<T, U> Default for ProtoCodec<T, U> {
    fn default() -> Self {
        ProtoCodec(ProstCodec::default())
    }
}

impl<T, U> tonic::codec::Codec for ProtoCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProtoDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        self.0.encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProtoDecoder(self.0.decoder())
    }
}

/// prost's decoder, with decode failures reported as INVALID_ARGUMENT.
#[derive(Debug)]
pub struct ProtoDecoder<U>(ProstDecoder<U>);

impl<U: prost::Message + Default> Decoder for ProtoDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        self.0.decode(buf).map_err(invalid_message)
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}

/// The status of a message that did not decode.
fn invalid_message(status: Status) -> Status {
    if status.code() != Code::Internal {
        return status;
    }
    Status::invalid_argument(format!(
        "the message is not a valid backgroundtransfer.v1 message ({}); build the client from this server's proto, which reflection serves",
        status.message()
    ))
}
