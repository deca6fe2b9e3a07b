//! One keep-alive HTTP/1.1 connection to one origin (hyper's `client::conn`, no pool).

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::BoxError;

/// One keep-alive HTTP/1.1 connection to one origin.
pub(crate) struct Conn {
    host: String,
    send: SendRequest<Full<Bytes>>,
}

impl Conn {
    /// Connects to the authority of `uri` (`TCP_NODELAY`) and spawns the connection task.
    pub(crate) async fn open(uri: &Uri) -> Result<Conn, BoxError> {
        let authority = uri.authority().ok_or("URL without host:port")?.to_string();
        let stream = TcpStream::connect(&authority).await?;
        stream.set_nodelay(true)?;
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                eprintln!("loadgen: connection to {authority} ended: {e}");
            }
        });
        Ok(Conn {
            host: uri.authority().map(ToString::to_string).unwrap_or_default(),
            send,
        })
    }

    /// POSTs `body` as JSON and returns the status and the whole answer.
    pub(crate) async fn post(
        &mut self,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<(StatusCode, Bytes), BoxError> {
        self.request(Method::POST, path, headers, body).await
    }

    /// GETs `path` with `headers` and returns the status and the whole answer.
    pub(crate) async fn get_with(
        &mut self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<(StatusCode, Bytes), BoxError> {
        self.request(Method::GET, path, headers, Bytes::new()).await
    }

    async fn request(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<(StatusCode, Bytes), BoxError> {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, self.host.as_str());
        if !body.is_empty() {
            req = req.header(CONTENT_TYPE, "application/json");
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(body))?;
        self.send.ready().await?;
        let res = self.send.send_request(req).await?;
        let status = res.status();
        let body = res.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }
}
