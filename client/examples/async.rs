//! The client on tokio: `cargo run -p forkserver-client --features tokio --example async`.
//!
//! This program is its own server (zygote mode). `Zygote::serve_if_requested` runs first, before
//! any runtime starts: a launched server must be single-threaded, and refuses to serve from a
//! process that already has the runtime's worker threads.

use std::sync::Arc;
use std::time::Duration;

use forkserver_client::Client;
use forkserver_server::Zygote;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    Zygote::new().serve_if_requested();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run())
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let client = Client::launch(std::env::current_exe()?)?;

    // Output, collected without blocking the runtime.
    let out = client.command("uname").arg("-s").output_async().await?;
    print!("uname -s: {}", String::from_utf8_lossy(&out.stdout));

    // A hundred children at once, from ten tasks.
    let tasks: Vec<_> = (0..10)
        .map(|t| {
            let client = client.clone();
            tokio::spawn(async move {
                let mut sum = 0;
                for i in 0..10 {
                    let code = (t * 10 + i) % 7;
                    let child = client
                        .command("sh")
                        .args(["-c", &format!("exit {code}")])
                        .spawn_async()
                        .await?;
                    sum += child.wait().await?.code().unwrap_or(0);
                }
                Ok::<_, forkserver_client::Error>(sum)
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    println!("100 children, exit codes summing to {total}");

    // Kill from one task while another waits.
    let child = Arc::new(client.command("sleep").arg("30").spawn_async().await?);
    let waiter = tokio::spawn({
        let child = child.clone();
        async move { child.wait().await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    child.kill().await?;
    println!("sleep 30: {}", waiter.await??);
    Ok(())
}
