//! A minimal Headlamp-protocol client: subscribes to one path and prints events.
//!
//! ```text
//! cargo run --example client -- ws://127.0.0.1:4466/wsMultiplexer demo /api/v1/pods [query]
//! ```

use anyhow::{Context, bail};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, cluster, path, rest @ ..] = args.as_slice() else {
        bail!("usage: client <ws-url> <clusterId> <path> [query]");
    };
    let query = rest.first().map_or("watch=1", String::as_str);
    let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .with_context(|| format!("connecting to {url}"))?;
    let request = json!({"clusterId": cluster, "path": path, "query": query, "userId": "", "type": "REQUEST"});
    ws.send(Message::text(request.to_string())).await?;
    eprintln!("subscribed to {cluster} {path}?{query}; Ctrl-C to stop");
    while let Some(msg) = ws.next().await {
        let Message::Text(text) = msg? else { continue };
        let frame: Value = serde_json::from_str(&text)?;
        match frame["type"].as_str() {
            Some("DATA") => {
                let event: Value = serde_json::from_str(frame["data"].as_str().unwrap_or("{}"))?;
                let md = &event["object"]["metadata"];
                println!(
                    "{:<9} {}/{} rv={}",
                    event["type"].as_str().unwrap_or("?"),
                    md["namespace"].as_str().unwrap_or("-"),
                    md["name"].as_str().unwrap_or("-"),
                    md["resourceVersion"].as_str().unwrap_or("?"),
                );
            }
            Some("ERROR") => eprintln!("error: {}", frame["data"].as_str().unwrap_or("")),
            Some("COMPLETE") => {
                eprintln!("subscription complete");
                break;
            }
            _ => eprintln!("unexpected frame: {text}"),
        }
    }
    Ok(())
}
