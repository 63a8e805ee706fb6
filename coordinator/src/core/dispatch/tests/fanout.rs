//! The policies that moved out of the HTTP handlers: `n` choices as `n`
//! jobs ([`super::super::start_choices`]), and what a streamed job cut
//! short is charged ([`super::super::Cut`]).

use super::*;
use crate::core::dispatch::{Cut, run_choices, start_choices, summed};

#[tokio::test]
async fn n_choices_are_n_jobs_each_booked_and_summed() {
    let s = setup(vec![Script::Serve(vec!["Hello", " world"])]);
    let mut actives = start_choices(&s.core, (*job(&[])).clone(), 3, &s.principal, None)
        .await
        .unwrap();
    assert_eq!(actives.len(), 3);
    let ids: std::collections::HashSet<_> = actives.iter().map(|a| a.job_id()).collect();
    assert_eq!(ids.len(), 3, "each choice is its own job");
    let finished = run_choices(&s.core, &mut actives).await.unwrap();
    assert_eq!(finished.len(), 3);
    assert!(finished.iter().all(|f| f.text == "Hello world"));
    let (usage, charge) = summed(&finished);
    assert_eq!(usage.output_tokens, 3 * finished[0].usage.output_tokens);
    assert_eq!(usage.input_tokens, 3 * finished[0].usage.input_tokens);
    assert_eq!(charge.total, 3 * finished[0].charge.total);
    assert!(charge.balances());
    assert_eq!(s.entries(), 3, "every choice is booked");
    assert_eq!(s.balance(), i128::from(BALANCE) - i128::from(charge.total));
}

#[tokio::test]
async fn no_choices_asked_for_is_one() {
    let s = setup(vec![Script::Serve(vec!["a"])]);
    let actives = start_choices(&s.core, (*job(&[])).clone(), 0, &s.principal, None)
        .await
        .unwrap();
    assert_eq!(actives.len(), 1);
}

#[tokio::test]
async fn a_client_that_hangs_up_pays_for_what_it_received() {
    let s = setup(vec![Script::Serve(vec!["one", " two", " three"])]);
    let mut active = start_job(&s.core, job(&[]), &s.principal, None)
        .await
        .unwrap();
    let mut received = String::new();
    while received.len() < "one two".len() {
        match active.next_streamed(&s.core).await.unwrap() {
            Step::Delta(text, _) => received.push_str(&text),
            _ => panic!("the job cannot end before its third piece"),
        }
    }
    let partial = active
        .cut_short(&s.core, Cut::HungUp)
        .await
        .expect("a partial charge");
    assert_eq!(partial.text, "one two");
    assert_eq!(partial.usage.output_tokens, 2);
    assert_eq!(s.entries(), 1);
    assert_eq!(
        s.balance(),
        i128::from(BALANCE) - i128::from(partial.charge.total)
    );
}

#[tokio::test]
async fn shutdown_ends_a_streamed_job_and_charges_what_was_received() {
    let s = setup(vec![Script::Trickle(100, Duration::from_secs(30))]);
    let mut active = start_job(&s.core, job(&[]), &s.principal, None)
        .await
        .unwrap();
    assert!(matches!(
        active.next_streamed(&s.core).await.unwrap(),
        Step::Delta(..)
    ));
    s.core.shutdown().cancel();
    let err = match active.next_streamed(&s.core).await {
        Err(e) => e,
        Ok(_) => panic!("a shutdown ends the stream"),
    };
    assert!(matches!(err, Error::ShuttingDown(_)), "{err:?}");
    let partial = active
        .cut_short(&s.core, Cut::Failed(&err))
        .await
        .expect("the first token's running receipt is booked");
    assert_eq!(partial.usage.output_tokens, 1);
    assert_eq!(s.entries(), 1);
    assert_eq!(
        s.balance(),
        i128::from(BALANCE) - i128::from(partial.charge.total)
    );
}
