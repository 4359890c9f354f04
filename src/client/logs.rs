//! Following a task's logs over Server-Sent Events
//! (`GET /tasks/{id}/logs?follow=true`).

use futures_util::stream::{self, Stream};
use reqwest::Method;

use super::{Client, ClientError};
use crate::runtime::{LogChunk, LogOffsets};
use crate::task::TaskId;

/// What a followed log brings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogEvent {
    /// Output, in the order it was written per stream.
    Output(LogChunk),
    /// The task has finished and all it printed was sent: its status.
    End(String),
}

/// One parsed SSE event: its name, id and data.
fn parse_event(block: &str) -> Option<(String, Option<String>, String)> {
    let (mut event, mut id, mut data) = (String::from("message"), None, Vec::new());
    for line in block.lines() {
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => event = value.to_owned(),
            "id" => id = Some(value.to_owned()),
            "data" => data.push(value),
            _ => {}
        }
    }
    (!data.is_empty()).then(|| (event, id, data.join("\n")))
}

impl Client {
    /// Task `id`'s output as it is printed, from `from` on (pass the
    /// `next` of the last chunk seen to resume), ending with
    /// [`LogEvent::End`].
    pub async fn follow_logs(
        &self,
        id: TaskId,
        from: LogOffsets,
    ) -> Result<impl Stream<Item = Result<LogEvent, ClientError>>, ClientError> {
        let resume = [("last-event-id", from.to_string())];
        let response = self
            .send(
                Method::GET,
                &format!("/tasks/{id}/logs?follow=true"),
                None,
                &resume,
            )
            .await?;
        if !response.status().is_success() {
            return Err(Self::problem(response).await);
        }
        let state = (response, Vec::<u8>::new(), false);
        Ok(stream::unfold(
            state,
            |(mut response, mut buffer, done)| async move {
                if done {
                    return None;
                }
                loop {
                    // Bytes, not text, until an event is whole: a character may
                    // be split between two chunks.
                    if let Some(end) = buffer.windows(2).position(|w| w == b"\n\n") {
                        let block: Vec<u8> = buffer.drain(..end + 2).collect();
                        let Some((event, id, data)) = parse_event(&String::from_utf8_lossy(&block))
                        else {
                            continue;
                        };
                        let item = match event.as_str() {
                            "end" => Ok(LogEvent::End(data)),
                            stream => serde_json::from_str::<String>(&data)
                                .map_err(|e| ClientError::Decode(e.to_string()))
                                .and_then(|text| {
                                    let next = id
                                        .unwrap_or_default()
                                        .parse::<LogOffsets>()
                                        .map_err(ClientError::Decode)?;
                                    Ok(LogEvent::Output(LogChunk {
                                        stream: stream.to_owned(),
                                        text,
                                        next,
                                    }))
                                }),
                        };
                        let ended = matches!(item, Ok(LogEvent::End(_)));
                        return Some((item, (response, buffer, ended)));
                    }
                    match response.chunk().await {
                        Ok(Some(bytes)) => buffer.extend_from_slice(&bytes),
                        Ok(None) => return None,
                        Err(e) => return Some((Err(e.into()), (response, buffer, true))),
                    }
                }
            },
        ))
    }
}
