##! ETooL::Alert: a notice for connections classified as a label an
##! analyst chose (alert_labels). By default the daemon's own threshold
##! decides (the verdict's ``unknown`` flag, from etool.yaml's
##! ``classify.threshold``); label_thresholds overrides it per label.

@load base/frameworks/notice
@load ./config
@load ./types
@load ./publish

module ETooL;

export {
	redef enum Notice::Type += {
		## A connection was classified as a label in alert_labels.
		Alert,
	};

	## The label of v that raises ETooL::Alert (service first, then app),
	## or "" if none does. A label in alert_labels alerts if it is in
	## label_thresholds and the confidence reaches that value, or else if
	## the verdict is not unknown.
	global alert_label: function(v: Verdict): string;
}

function alert_label(v: Verdict): string
	{
	for ( _, l in vector(v$service, v$app) )
		{
		if ( l !in alert_labels )
			next;

		if ( ( l in label_thresholds ) ? ( v$confidence >= label_thresholds[l] ) : ! v$unknown )
			return l;
		}

	return "";
	}

hook flow_answered(v: Verdict, p: Pending)
	{
	if ( |alert_labels| == 0 )
		return;

	local label = alert_label(v);
	if ( label == "" )
		return;

	NOTICE([$note=Alert, $uid=v$uid, $id=p$id,
	    $msg=fmt("connection classified as %s (service=%s app=%s, confidence %.2f, model %s)",
	        label, v$service, v$app, v$confidence, v$model),
	    $sub=label,
	    $identifier=cat_sep("/", "", p$id$orig_h, p$id$resp_h, label),
	    $suppress_for=alert_notice_interval]);
	}
