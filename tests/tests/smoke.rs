use rpc_core::{Channel, Server};

#[rpc_core::service]
pub trait Greeter {
    /// Says hello.
    async fn hello(&self, name: String) -> String;
    async fn add(&self, a: i64, b: i64) -> Result<i64, String>;
}

struct G;
impl Greeter for G {
    async fn hello(&self, name: String) -> String {
        format!("Hello, {name}!")
    }
    async fn add(&self, a: i64, b: i64) -> Result<i64, String> {
        a.checked_add(b).ok_or_else(|| "overflow".to_string())
    }
}

#[tokio::test]
async fn smoke() {
    let server = Server::builder().add_service(GreeterServer::new(G)).start("127.0.0.1:0").await.unwrap();
    let client = GreeterClient::new(Channel::connect(server.local_addr().to_string()).await.unwrap());
    assert_eq!(client.hello("Ada".into()).await.unwrap(), "Hello, Ada!");
    assert_eq!(client.add(1, 2).await.unwrap(), Ok(3));
    assert_eq!(client.add(i64::MAX, 2).await.unwrap(), Err("overflow".into()));
}
